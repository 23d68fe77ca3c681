"""`talktuah-chat [--url URL] [--key KEY]` (or `python -m talktuah_chat`)."""

import argparse

from talktuah_chat import config as configuration
from talktuah_chat.app import ChatApp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="talktuah-chat", description="Chat with a TalkTuah gateway from the terminal."
    )
    parser.add_argument("--url", help="the gateway, e.g. http://127.0.0.1:8000 (TALKTUAH_URL)")
    parser.add_argument("--key", help="your API key, tt-… (TALKTUAH_KEY)")
    args = parser.parse_args(argv)
    ChatApp(configuration.load(url=args.url, key=args.key)).run()


if __name__ == "__main__":
    main()

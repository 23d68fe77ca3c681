"""`python manage.py fake_hub --port 8002`: a local fake Hugging Face Hub serving a demo
repo, so `make run` can show downloads and switches with no network."""

import json
import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from devtools.fakehub import FakeHub

DEMO_REPO = "demo/tiny-chat"


def demo_files(weights_mb: int) -> dict[str, bytes]:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 128, "num_hidden_layers": 2}
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer_config.json": b'{"eos_token": "<|im_end|>"}',
        "README.md": b"# demo/tiny-chat\nServed by TalkTuah's local fake Hub.\n",
        "model.safetensors": os.urandom(weights_mb * 1024 * 1024),
    }


class Command(BaseCommand):
    help = "Serve a local fake Hugging Face Hub with a demo repo (for the demo and tests)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8002)
        parser.add_argument("--repo", default=DEMO_REPO, help="the demo repo's id")
        parser.add_argument("--weights-mb", type=int, default=64, help="size of its weights")
        parser.add_argument(
            "--seconds", type=float, default=8.0, help="how long the weights take to download"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        hub = FakeHub(port=options["port"])
        hub.add_repo(options["repo"], demo_files(options["weights_mb"]))
        chunk = 256 * 1024
        chunks = max(options["weights_mb"] * 1024 * 1024 // chunk, 1)
        # Slow enough that the progress bar has something to show.
        hub.slow(options["repo"], "model.safetensors", options["seconds"] / chunks, chunk=chunk)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with hub:
            self.stdout.write(f"fake Hub on {hub.url} serving {options['repo']}")
            stop.wait()

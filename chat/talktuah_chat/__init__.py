"""TalkTuah's terminal chat client: a Textual application that talks to a TalkTuah
gateway over HTTP with the user's key. It imports nothing of the gateway itself, so it
installs alone on a laptop (`pipx install ./chat`)."""

__version__ = "0.1.0"

"""The client as a user runs it: `python -m talktuah_chat` in a real terminal (tmux),
configured by TALKTUAH_URL / TALKTUAH_KEY, typing into it and reading the screen; at 60
columns too, where issue 23 found keys cut off and typing lost after the settings."""

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from talktuah_chat.store import Store
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
    ),
]


class Tmux:
    """A private tmux server (its own socket) with one 120x40 session."""

    def __init__(self, socket: str) -> None:
        self.base = ["tmux", "-L", socket]

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10)
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat")

    def alive(self) -> bool:
        return (
            subprocess.run(
                [*self.base, "has-session", "-t", "chat"], capture_output=True
            ).returncode
            == 0
        )


def client_command(url: str, key: str, home) -> str:
    env = {
        "TALKTUAH_URL": url,
        "TALKTUAH_KEY": key,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "TERM": "xterm-256color",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    # A clean environment: the test run's own (COLUMNS=80 under pytest, say) stays out.
    assignments = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    return " ".join(["env", "-i", *assignments, shlex.quote(sys.executable), "-m", "talktuah_chat"])


@contextlib.contextmanager
def client_in_tmux(command: str, *, columns: int, rows: int) -> Iterator[Tmux]:
    """The client run by command in a new tmux session of that size; on the way out the
    tmux server is killed (after printing the screen if the client still runs: why)."""
    tmux = Tmux(f"talktuah-chat-test-{time.monotonic_ns()}")
    tmux.run("new-session", "-d", "-s", "chat", "-x", str(columns), "-y", str(rows), command)
    try:
        yield tmux
    finally:
        if tmux.alive():
            print(tmux.screen())
        tmux.run("kill-server")


def test_it_chats_in_a_real_terminal(gateway, simulator, make_key, tmp_path):
    simulator(tokens=12, token_delay=0.02)
    command = client_command(gateway.url, make_key(), tmp_path)
    with client_in_tmux(command, columns=120, rows=40) as tmux:
        wait_for(lambda: "f9 Settings" in tmux.screen(), message="the chat screen")
        tmux.run("send-keys", "-t", "chat", "-l", "Hello from tmux")
        tmux.run("send-keys", "-t", "chat", "Enter")
        wait_for(lambda: "tok/s" in tmux.screen(), message="a reply with its figures")
        screen = tmux.screen()
        assert "Hello, this is the vLLM simulator" in screen
        assert "completion 12 tok" in screen
        tmux.run("send-keys", "-t", "chat", "C-q")
        wait_for(lambda: not tmux.alive(), message="the client to quit on Ctrl+Q")
    assert (tmp_path / "data" / "talktuah-chat" / "conversations.sqlite3").is_file()


def test_at_60_columns_keys_show_typing_survives_settings_and_copy_reaches_the_terminal(
    gateway, simulator, make_key, tmp_path
):
    simulator(tokens=6, token_delay=0.02)
    command = client_command(gateway.url, make_key(), tmp_path)
    with client_in_tmux(command, columns=60, rows=24) as tmux:
        # The server keeps what a program copies with OSC 52 as a buffer ("on"; the
        # default, "external", only passes it on to the terminal tmux runs in). Set once
        # the server runs: one without a session exits at once.
        tmux.run("set-option", "-g", "set-clipboard", "on")
        # Every key's whole label, once the footer has settled: while the screen mounts,
        # it is laid out a frame or two with the labels cut ("f9 Setti").
        labels = (
            "^n New",
            "f2 Options",
            "f3 Export",
            "f4 Copy",
            "f5 Retry",
            "f8 Delete",
            "f9 Settings",
        )

        def every_label_shows() -> bool:
            screen = tmux.screen()
            return all(label in screen for label in labels)

        wait_for(every_label_shows, message="the chat screen with every key's whole label")
        tmux.run("send-keys", "-t", "chat", "-l", "Hello")
        wait_for(lambda: "Hello" in tmux.screen(), message="the typed text")
        tmux.run("send-keys", "-t", "chat", "F9")
        wait_for(lambda: "esc Back" in tmux.screen(), message="the settings screen")
        tmux.run("send-keys", "-t", "chat", "Escape")
        wait_for(lambda: "f9 Settings" in tmux.screen(), message="the chat screen again")
        # Typing goes on in the input, after what was typed before.
        tmux.run("send-keys", "-t", "chat", "-l", " again")
        wait_for(lambda: "Hello again" in tmux.screen(), message="typing after the settings")
        tmux.run("send-keys", "-t", "chat", "Enter")
        wait_for(lambda: "tok/s" in tmux.screen(), message="a reply with its figures")
        tmux.run("send-keys", "-t", "chat", "F4")
        wait_for(lambda: tmux.run("list-buffers"), message="the copied reply in tmux")
        copied = tmux.run("show-buffer")
        tmux.run("send-keys", "-t", "chat", "C-q")
        wait_for(lambda: not tmux.alive(), message="the client to quit on Ctrl+Q")
    store = Store(tmp_path / "data" / "talktuah-chat" / "conversations.sqlite3")
    [conversation] = store.conversations()
    assert conversation.title == "Hello again"
    [_prompt, reply] = store.messages(conversation.id)
    assert copied == reply.content
    assert copied.startswith("Hello, this is")

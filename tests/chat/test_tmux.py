"""The client as a user runs it: `python -m talktuah_chat` in a real terminal (tmux),
configured by TALKTUAH_URL / TALKTUAH_KEY, typing into it and reading the screen."""

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

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


def test_it_chats_in_a_real_terminal(gateway, simulator, make_key, tmp_path):
    simulator(tokens=12, token_delay=0.02)
    key = make_key()
    env = {
        "TALKTUAH_URL": gateway.url,
        "TALKTUAH_KEY": key,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "TERM": "xterm-256color",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    # A clean environment: the test run's own (COLUMNS=80 under pytest, say) stays out.
    assignments = [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    command = " ".join(
        ["env", "-i", *assignments, shlex.quote(sys.executable), "-m", "talktuah_chat"]
    )
    tmux = Tmux(f"talktuah-chat-test-{time.monotonic_ns()}")
    tmux.run("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", command)
    try:
        wait_for(lambda: "f9 Settings" in tmux.screen(), message="the chat screen")
        tmux.run("send-keys", "-t", "chat", "-l", "Hello from tmux")
        tmux.run("send-keys", "-t", "chat", "Enter")
        wait_for(lambda: "tok/s" in tmux.screen(), message="a reply with its figures")
        screen = tmux.screen()
        assert "Hello, this is the vLLM simulator" in screen
        assert "completion 12 tok" in screen
        tmux.run("send-keys", "-t", "chat", "C-q")
        wait_for(lambda: not tmux.alive(), message="the client to quit on Ctrl+Q")
    finally:
        if tmux.alive():
            print(tmux.screen())
        tmux.run("kill-server")
    assert (tmp_path / "data" / "talktuah-chat" / "conversations.sqlite3").is_file()

"""`python manage.py run_demo`: what `make run` starts on localhost — the gateway (as
`manage.py serve` runs it), the worker (whose process engine runs the vLLM simulator) and
a local fake Hugging Face Hub with a demo repo — with a ready-to-paste curl and OpenAI-SDK
snippet.

Ctrl-C, SIGTERM or SIGHUP stops everything it started, once, however the signal comes:
to this process or to its process group (`kill -- -PGID`, CI, systemd), and twice (make
passes a SIGTERM on to its child, so `make run` stopped by its group gets it twice). A
signal only sets a flag: the cleanup is never interrupted, and a second signal changes
nothing (a KeyboardInterrupt raised into the cleanup left the others running)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.spec import default_spec
from devtools.management.commands.demo_setup import demo_key_file
from modelmgr.engines import engine_for
from plumbing.errors import EngineError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the children may take to stop on SIGTERM before they are killed.
STOP_SECONDS = 15.0


class _StopRequest:
    """The first stop signal's number, kept by a handler that does nothing else."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum


def _stop_children(children: list["subprocess.Popen[bytes]"]) -> None:
    """SIGTERM to each child, SIGKILL to those still running after STOP_SECONDS, and to
    whatever each child's process group still holds (each child leads one)."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


class Command(BaseCommand):
    help = "Run the vLLM simulator and the gateway for a local demo."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--sim-port", type=int, default=8001)
        parser.add_argument("--model", default="demo-model")
        parser.add_argument("--hub-port", type=int, default=8002)

    def handle(self, *args: Any, **options: Any) -> None:
        host, port, sim_port = options["host"], options["port"], options["sim_port"]
        key_file = demo_key_file()
        if not key_file.exists():
            raise CommandError("No demo key: run `python manage.py demo_setup` first.")
        key = key_file.read_text().strip()
        hub_url = f"http://127.0.0.1:{options['hub_port']}"
        env = {
            **os.environ,
            "VLLM_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "VLLM_MODEL": options["model"],
            "TALKTUAH_ENGINE": "process",
            # The demo downloads from the local fake Hub into var/hf, never from the web.
            "HF_ENDPOINT": hub_url,
            "HF_HOME": str(settings.VAR_DIR / "hf"),
            "HF_HUB_CACHE": str(settings.VAR_DIR / "hf" / "hub"),
            "HF_HUB_DISABLE_XET": "1",
        }
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        commands = [
            [*manage, "fake_hub", "--port", str(options["hub_port"])],
            [*manage, "run_worker"],
            # The production entry point: uvicorn with the gateway's guarded protocol.
            [*manage, "serve", "--host", host, "--port", str(port), "--workers", "1"],
        ]
        # Before the first child: a signal from now on is noted, not fatal.
        stop = _StopRequest()
        children: list[subprocess.Popen[bytes]] = []
        try:
            for command in commands:
                if stop.signum is None:
                    # Sessions of their own: a signal to this command's group (Ctrl-C,
                    # `kill -- -PGID`) reaches only this command, which stops them below.
                    children.append(
                        subprocess.Popen(
                            command, env=env, cwd=settings.BASE_DIR, start_new_session=True
                        )
                    )
            self._run(options, key, hub_url, children, stop)
        finally:
            _stop_children(children)
            # The worker leaves vLLM running on purpose (a restarted worker adopts it);
            # the demo stops it with everything else.
            try:
                engine_for(default_spec()).stop()
            except EngineError as exc:
                self.stderr.write(f"could not stop the simulator: {exc}")
            self.stdout.write("Stopped.")

    def _run(
        self,
        options: dict[str, Any],
        key: str,
        hub_url: str,
        children: list["subprocess.Popen[bytes]"],
        stop: _StopRequest,
    ) -> None:
        """Say how to use the demo, then wait for a stop signal (or a child's end)."""
        host, port, sim_port = options["host"], options["port"], options["sim_port"]
        base = f"http://{host}:{port}"
        self.stdout.write(
            f"""
TalkTuah is starting on {base} (simulated model {options["model"]!r} on :{sim_port},
a fake Hub with demo/tiny-chat on {hub_url}).
Admin: {base}/admin/ (admin / admin)   API docs: {base}/api/docs

Chat, streamed token by token:

  curl -N {base}/v1/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"messages": [{{"role": "user", "content": "Hello!"}}], "stream": true}}'

With the OpenAI SDK (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
  stream = client.chat.completions.create(model="{options["model"]}", stream=True,
      messages=[{{"role": "user", "content": "Hello!"}}])
  for chunk in stream: print(chunk.choices[0].delta.content or "", end="", flush=True)

Download the demo model from the fake Hub and serve it when done:

  curl -X POST "{base}/api/download-model?model_id=demo/tiny-chat&auto=true" \
    -H "Authorization: Bearer {key}"
  curl {base}/api/download-progress -H "Authorization: Bearer {key}"

Ctrl-C stops everything.
"""
        )
        while stop.signum is None:
            if any(child.poll() is not None for child in children):
                raise CommandError("a process of the demo exited; stopping the rest")
            time.sleep(0.2)  # a signal's handler runs here, and the sleep goes on
        self.stdout.write(f"Stopping ({signal.Signals(stop.signum).name})…")

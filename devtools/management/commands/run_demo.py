"""`python manage.py run_demo`: what `make run` starts on localhost — the gateway (as
`manage.py serve` runs it), the worker (whose process engine runs the vLLM simulator) and
a local fake Hugging Face Hub with a demo repo — with a ready-to-paste curl and OpenAI-SDK
snippet. Ctrl-C (or SIGTERM) stops everything it started."""

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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
        children = [
            subprocess.Popen(
                [*manage, "fake_hub", "--port", str(options["hub_port"])],
                env=env,
                start_new_session=True,
            ),
            subprocess.Popen([*manage, "run_worker"], env=env, start_new_session=True),
            # The production entry point: uvicorn with the gateway's guarded protocol.
            subprocess.Popen(
                [*manage, "serve", "--host", host, "--port", str(port), "--workers", "1"],
                env=env,
                cwd=settings.BASE_DIR,
                start_new_session=True,
            ),
        ]
        # The children have their own sessions, so Ctrl-C reaches only this command,
        # which stops them in order below.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
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
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            raise CommandError("a process of the demo exited; stopping the rest")
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            # The worker leaves vLLM running on purpose (a restarted worker adopts it);
            # the demo stops it with everything else.
            engine_for(default_spec()).stop()

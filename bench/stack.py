"""The stack under test: the fixed-response upstream (bench/upstream.py), TalkTuah on the
production path and, when installed, LiteLLM's proxy in front of the same upstream; the
gateways pinned to one core, the upstream to the other; and the targets they offer."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from litellm_proxy import LITELLM_KEY, litellm_version, start_litellm
from plan import BENCH, MODEL, ROOT, UPSTREAM_CHUNKS, UPSTREAM_GAP_MS, Target
from processes import Service, free_port, start_service


@dataclass
class Stack:
    upstream: Service
    gateway: Service
    key: str  # TalkTuah's API key
    litellm: Service | None = None
    litellm_version: str = ""

    def targets(self) -> list[Target]:
        """direct, TalkTuah and (when it runs) LiteLLM, in the report's order."""
        found = [
            # Direct requests carry a header of the same size, so request sizes match.
            Target("direct", self.upstream.port, "Bearer " + "x" * len(self.key)),
            Target("TalkTuah", self.gateway.port, "Bearer " + self.key),
        ]
        if self.litellm is not None:
            found.append(Target("LiteLLM", self.litellm.port, f"Bearer {LITELLM_KEY}"))
        return found


def start_stack(
    logs: Path, cores: tuple[int, int] | None, litellm: Path | None, started: list[Service]
) -> Stack:
    """Starts the stack, appending each service to `started` as it comes up, so the
    caller stops them all even when a later one fails to start."""
    gateway_core, load_core = cores if cores else (None, None)
    base_env = {
        k: v
        for k, v in os.environ.items()
        # The defaults (SQLite in a temporary folder, the local-memory cache), never a
        # database or Redis the shell happens to point at.
        if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "ACCESS_LOG")
    }
    up_port = free_port()
    upstream = start_service(
        "Upstream",
        [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port), "--model", MODEL,
         "--chunks", str(UPSTREAM_CHUNKS), "--gap-ms", str(UPSTREAM_GAP_MS)],
        port=up_port, health="/health", core=load_core, logs=logs, env=base_env, cwd=ROOT,
        timeout=30,
    )  # fmt: skip
    started.append(upstream)

    var = logs / "var"
    var.mkdir()
    env = base_env | {
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + os.urandom(8).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TALKTUAH_VAR_DIR": str(var),
        "VLLM_BASE_URL": upstream.base,
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, cwd=ROOT, check=True)
    created = subprocess.run(
        [*manage, "create_api_key", "--name", "bench", "--rpm", "100000000"],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1].strip()
    gw_port = free_port()
    gateway = start_service(
        "TalkTuah",
        [*manage, "serve", "--port", str(gw_port), "--workers", "1"],
        port=gw_port, health="/livez", core=gateway_core, logs=logs, env=env, cwd=ROOT,
        timeout=60,
    )  # fmt: skip
    started.append(gateway)
    stack = Stack(upstream=upstream, gateway=gateway, key=key)

    if litellm is not None:
        service = start_litellm(litellm, upstream, gateway_core, logs, base_env)
        if service is not None:
            started.append(service)
            stack.litellm = service
            stack.litellm_version = litellm_version(litellm)
    return stack

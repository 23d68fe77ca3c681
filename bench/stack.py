"""The stack under test: the fixed-response upstream (bench/upstream.py), TalkTuah on the
production path, a second TalkTuah with three backends configured (the same upstream as
`default`, a replica of it serving the same model and a backend serving another model)
and, when installed, LiteLLM's proxy in front of the same upstream; the gateways pinned
to one core, the upstreams to the other; and the targets they offer."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from litellm_proxy import LITELLM_KEY, litellm_version, start_litellm
from plan import (
    BACKENDS_TARGET,
    BENCH,
    MODEL,
    OTHER_MODEL,
    ROOT,
    UPSTREAM_CHUNKS,
    UPSTREAM_GAP_MS,
    Target,
)
from processes import Service, free_port, start_service


@dataclass
class Stack:
    upstream: Service
    gateway: Service
    key: str  # TalkTuah's API key
    backends: Service  # TalkTuah with three backends: `default` is `upstream`
    backends_key: str  # its own API key (its own database)
    extra_upstreams: list[Service] = field(default_factory=list)  # its other two backends
    litellm: Service | None = None
    litellm_version: str = ""

    def targets(self) -> list[Target]:
        """direct, TalkTuah, TalkTuah with 3 backends and (when it runs) LiteLLM, in the
        report's order."""
        found = [
            # Direct requests carry a header of the same size, so request sizes match.
            Target("direct", self.upstream.port, "Bearer " + "x" * len(self.key)),
            Target("TalkTuah", self.gateway.port, "Bearer " + self.key),
            Target(BACKENDS_TARGET, self.backends.port, "Bearer " + self.backends_key),
        ]
        if self.litellm is not None:
            found.append(Target("LiteLLM", self.litellm.port, f"Bearer {LITELLM_KEY}"))
        return found


@contextlib.contextmanager
def checkout_of(revision: str, logs: Path) -> Iterator[Path]:
    """`revision` of this repository checked out (git worktree) in logs/baseline while
    the block runs, for a baseline gateway (bench/ab.py, bench/instructions.py)."""
    folder = logs / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(folder), revision],
        cwd=ROOT, check=True,
    )  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT)


def start_upstream(
    name: str, model: str, core: int | None, logs: Path, env: dict[str, str]
) -> Service:
    port = free_port()
    return start_service(
        name,
        [sys.executable, str(BENCH / "upstream.py"), "--port", str(port), "--model", model,
         "--chunks", str(UPSTREAM_CHUNKS), "--gap-ms", str(UPSTREAM_GAP_MS)],
        port=port, health="/health", core=core, logs=logs, env=env, cwd=ROOT, timeout=30,
    )  # fmt: skip


def start_gateway(
    name: str,
    upstream: Service,
    more_backends: list[tuple[str, Service]],
    core: int | None,
    logs: Path,
    env: dict[str, str],
    root: Path = ROOT,
    wrap: Sequence[str] = (),
    timeout: float = 60,
) -> tuple[Service, str]:
    """A TalkTuah worker with its own database in its own folder, VLLM_BASE_URL pointing
    at `upstream` (the backend `default`) and `more_backends` added with `manage.py
    backend add` before it starts; returns it and its API key. `root` is the checkout
    it runs from (another one for bench/ab.py's baseline); `wrap` comes before its
    command (valgrind for bench/instructions.py)."""
    var = logs / f"var-{name.lower()}"
    var.mkdir()
    env = env | {
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + os.urandom(32).hex(),
        "METRICS_PUBLIC": "true",  # the run reads /metrics; only 127.0.0.1 reaches it
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TALKTUAH_VAR_DIR": str(var),
        "VLLM_BASE_URL": upstream.base,
        # The fixed-response upstream has no batch to fill: the 256 saturating streams
        # and the 1,000 held ones are all admitted at once, by the backend (its capacity)
        # and by the key (requests in flight); bench/fairness.py measures the queue.
        # Settings rather than create_api_key options, so bench/ab.py's older revisions
        # take them too (or ignore them).
        "BACKEND_CAPACITY": "1000000",
        "KEY_MAX_PARALLEL_REQUESTS": "1000000",
    }
    manage = [sys.executable, str(root / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, cwd=root, check=True)
    created = subprocess.run(
        [*manage, "create_api_key", "--name", "bench", "--rpm", "100000000"],
        env=env, cwd=root, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1].strip()
    for backend, service in more_backends:
        subprocess.run(
            [*manage, "backend", "add", backend, service.base],
            env=env, cwd=root, check=True, capture_output=True,
        )  # fmt: skip
    port = free_port()
    gateway = start_service(
        name,
        [*wrap, *manage, "serve", "--port", str(port), "--workers", "1"],
        port=port, health="/livez", core=core, logs=logs, env=env, cwd=root, timeout=timeout,
    )  # fmt: skip
    return gateway, key


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
        # database or Redis the shell happens to point at, nor backend settings.
        if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "ACCESS_LOG")
        and not k.startswith("BACKEND_")
    }
    upstream = start_upstream("Upstream", MODEL, load_core, logs, base_env)
    started.append(upstream)
    # The 3-backend gateway's other two: a replica of the bench model, so every request
    # is routed (power of two choices between the two serving it), and one serving
    # another model, so routing filters by model as well.
    replica = start_upstream("Upstream-replica", MODEL, load_core, logs, base_env)
    started.append(replica)
    other = start_upstream("Upstream-other", OTHER_MODEL, load_core, logs, base_env)
    started.append(other)

    gateway, key = start_gateway("TalkTuah", upstream, [], gateway_core, logs, base_env)
    started.append(gateway)
    more = [("replica", replica), ("other", other)]
    backends, backends_key = start_gateway(
        "TalkTuah-3-backends", upstream, more, gateway_core, logs, base_env
    )
    started.append(backends)
    stack = Stack(
        upstream=upstream,
        gateway=gateway,
        key=key,
        backends=backends,
        backends_key=backends_key,
        extra_upstreams=[replica, other],
    )

    if litellm is not None:
        service = start_litellm(litellm, upstream, gateway_core, logs, base_env)
        if service is not None:
            started.append(service)
            stack.litellm = service
            stack.litellm_version = litellm_version(litellm)
    return stack

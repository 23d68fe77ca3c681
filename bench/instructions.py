"""Instructions per request: this checkout's gateway against another checkout's (a git
revision), counted by valgrind's callgrind, so the figures depend neither on the
machine's speed nor on its other load (bench/ab.py's timings do, as ratios within one
run). What a change costs on the request path, to the percent, on a shared machine.

    .venv/bin/python bench/instructions.py 575b075
    .venv/bin/python bench/instructions.py main --requests 600 --streams 60

Each gateway runs as in `make bench` (one worker, DEBUG=false, SQLite, one key, the
fixed-response upstream) under `valgrind --tool=callgrind --trace-children=yes` with
instrumentation off; after a warm-up it is switched on (callgrind_control) for N
non-streaming requests one after another, then for M streams, each phase dumped on its
own. The backends' poller is set to BACKEND_POLL_SECONDS=1000 in both: a poll (the
backend rows, /health, /v1/models, /metrics) costs a few requests' worth and would land
in one gateway's phase and not in the other's; `--idle S` counts it apart (S seconds of
an idle gateway polling every second). The figures repeat to within about 1% from run
to run (the event loop's own turns vary a little with timing). Both gateways run one
after the other, about 30 s each; valgrind must be installed.
"""

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plan import CHAT_PATH, MODEL, ROOT, chat_body
from processes import BenchError, Service
from stack import checkout_of, start_gateway, start_upstream

WARM_UP = 50  # requests before counting: imports, caches and the connection pool warm


def count(
    name: str,
    root: Path,
    upstream: Service,
    logs: Path,
    env: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Instructions per request of one checkout's gateway: whole answers, streams, and
    (with --idle) per second of an idle gateway polling every second."""
    out = logs / f"callgrind-{name}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
                f"--callgrind-out-file={out}"]  # fmt: skip
    env = env | {"BACKEND_POLL_SECONDS": "1" if args.idle else "1000"}
    gateway, key = start_gateway(
        name, upstream, [], None, logs, env, root=root, wrap=valgrind, timeout=600
    )
    figures: dict[str, float] = {}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
        headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

        def send(body: bytes) -> None:
            connection.request("POST", CHAT_PATH, body, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise BenchError(f"{name} answered {answer.status}")

        whole, stream = chat_body(), chat_body(stream=True)
        for _ in range(WARM_UP):
            send(whole)
        send(stream)
        control = ["callgrind_control"]
        phases: list[tuple[str, int]] = [("whole", args.requests), ("stream", args.streams)]
        if args.idle:
            phases.append(("idle second", int(args.idle)))
        subprocess.run([*control, "-i", "on", str(gateway.pid)], check=True, capture_output=True)
        for phase, times in phases:
            subprocess.run([*control, "-z", str(gateway.pid)], check=True, capture_output=True)
            if phase == "idle second":
                time.sleep(times)
            else:
                for _ in range(times):
                    send(whole if phase == "whole" else stream)
            before = set(logs.glob(out.name + "*"))
            subprocess.run([*control, "-d", str(gateway.pid)], check=True, capture_output=True)
            figures[phase] = _dumped(logs, out.name, before) / times
        connection.close()
    finally:
        gateway.stop()
    return figures


def _dumped(logs: Path, stem: str, before: set[Path]) -> int:
    """The instruction total of the dump callgrind_control just asked for."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(logs.glob(stem + "*")) - before
        for path in new:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise BenchError("callgrind wrote no dump")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the baseline: a git revision of this repository")
    parser.add_argument("--requests", type=int, default=300, help="non-streaming requests")
    parser.add_argument("--streams", type=int, default=40, help="streams (10 chunks each)")
    parser.add_argument("--idle", type=float, default=0, help="also S idle seconds, polling")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    logs = Path(tempfile.mkdtemp(prefix="talktuah-instructions-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    with checkout_of(args.revision, logs) as baseline:
        upstream = start_upstream("Upstream", MODEL, None, logs, env)
        try:
            ours = count("this-checkout", ROOT, upstream, logs, env, args)
            theirs = count("baseline", baseline, upstream, logs, env, args)
        finally:
            upstream.stop()
    print(f"\n{'instructions (millions)':32}{'this checkout':>16}{args.revision:>16}{'ratio':>10}")
    labels = {
        "whole": "per answer, not streamed",
        "stream": "per stream of 10 chunks",
        "idle second": "per idle second, polling",
    }
    for phase in ours:
        mine, base = ours[phase] / 1e6, theirs[phase] / 1e6
        print(f"{labels[phase]:32}{mine:16.3f}{base:16.3f}{mine / base:10.3f}")
    print(f"(logs: {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

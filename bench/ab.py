"""This checkout's gateway against another checkout's (a git revision), side by side in
one run: what a change bought, in figures that do not depend on the machine's speed or
its other load, because both gateways meet the same conditions in alternation.

    .venv/bin/python bench/ab.py 31892e7              # against that revision, 5 rounds
    .venv/bin/python bench/ab.py main --rounds 3
    .venv/bin/python bench/ab.py HEAD --env REQUEST_STARTS_PER_TURN=4 \
        --baseline-env REQUEST_STARTS_PER_TURN=0       # what a setting buys
    .venv/bin/python bench/ab.py 8e45fd3 --env REDIS_URL=redis://127.0.0.1:6379/13  # on Redis

The revision is checked out with `git worktree` into a temporary folder (removed after)
and runs with this checkout's Python environment. Both gateways are set up as in
`make bench` (one worker pinned to one core, the same fixed-response upstream); each
round measures, for each in turn (the order swapped every round): wrk at 1 connection
(every process on the gateway's core, as in `make bench`) and at 16, then after 4.5 s
idle (the upstream connections expired, as after a lull) one wave of 64 streams, then
three waves back to back. Figures are medians of rounds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from cpu import pick_cores, sharing_core
from plan import MODEL, Target
from processes import Service
from stack import checkout_of, start_gateway, start_upstream
from streams import measure_streams
from wrk import ensure_wrk, run_wrk

IDLE_SECONDS = 4.5  # longer than UPSTREAM_KEEPALIVE_EXPIRY: the next wave opens connections

FIGURES: dict[str, Callable[[dict[str, float]], float]] = {
    "overhead p50, 1 connection (ms)": lambda f: f["p50_1"] - f["direct_p50_1"],
    "overhead p99, 1 connection (ms)": lambda f: f["p99_1"] - f["direct_p99_1"],
    "req/s, 16 connections": lambda f: f["rps_16"],
    "TTFT p99, 64 streams after idle (ms)": lambda f: f["cold_ttft_p99"],
    "TTFT p50, 64 streams, 3 waves (ms)": lambda f: f["ttft_p50"],
    "TTFT p99, 64 streams, 3 waves (ms)": lambda f: f["ttft_p99"],
    "gaps p99, 64 streams, 3 waves (ms)": lambda f: f["gap_p99"],
    "  the same, over direct's in its round": lambda f: f["gap_p99"] / f["direct_gap_p99"],
}


def measure(
    target: Target, direct: Target, wrk: str, logs: Path, alone: AbstractContextManager[None]
) -> dict[str, float]:
    with alone:  # 1 connection: every process on the gateway's core (cpu.sharing_core)
        one, base = run_wrk(wrk, target, 1, 3, logs), run_wrk(wrk, direct, 1, 3, logs)
    sixteen = run_wrk(wrk, target, 16, 3, logs)
    time.sleep(IDLE_SECONDS)
    cold = measure_streams(target, 64, 1)
    warm = measure_streams(target, 64, 3)
    direct_warm = measure_streams(direct, 64, 3)
    return {
        "p50_1": one.p50_ms,
        "p99_1": one.p99_ms,
        "direct_p50_1": base.p50_ms,
        "direct_p99_1": base.p99_ms,
        "rps_16": sixteen.rps,
        "cold_ttft_p99": cold.ttft_p99,
        "ttft_p50": warm.ttft_p50,
        "ttft_p99": warm.ttft_p99,
        "gap_p99": warm.gap_p99,
        "direct_gap_p99": direct_warm.gap_p99,
    }


def settings_of(pairs: list[str]) -> dict[str, str]:
    """["NAME=VALUE", ...] -> {"NAME": "VALUE", ...}"""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"expected NAME=VALUE, got {pair!r}")
        found[name] = value
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the baseline: a git revision of this repository")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for both gateways (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for the baseline's gateway only (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    both, baseline_only = settings_of(args.env), settings_of(args.baseline_env)
    wrk = ensure_wrk()
    cores = pick_cores()
    gateway_core, load_core = cores if cores else (None, None)
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    logs = Path(tempfile.mkdtemp(prefix="talktuah-ab-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= both
    with checkout_of(args.revision, logs) as baseline:
        services: list[Service] = []
        try:
            upstream = start_upstream("Upstream", MODEL, load_core, logs, env)
            services.append(upstream)
            ours, our_key = start_gateway("this-checkout", upstream, [], gateway_core, logs, env)
            services.append(ours)
            theirs, their_key = start_gateway(
                "baseline", upstream, [], gateway_core, logs, env | baseline_only, root=baseline
            )
            services.append(theirs)
            targets = {
                "this checkout": Target("this checkout", ours.port, "Bearer " + our_key),
                args.revision: Target(args.revision, theirs.port, "Bearer " + their_key),
            }
            direct = Target("direct", upstream.port, "Bearer " + "x" * len(our_key))
            for target in targets.values():  # warm-up
                run_wrk(wrk, target, 16, 2, logs)
                measure_streams(target, 64, 1)
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for index in range(args.rounds):
                order = list(targets) if index % 2 == 0 else list(reversed(targets))
                for name in order:
                    alone = sharing_core(cores, [upstream.pid])
                    rounds[name].append(measure(targets[name], direct, wrk, logs, alone))
                print(f"round {index + 1}/{args.rounds} done", flush=True)
            names = list(targets)
            print(f"\n{'':40}" + "".join(f"{name:>16}" for name in names) + f"{'ratio':>10}")
            for label, figure in FIGURES.items():
                values = [statistics.median(figure(f) for f in rounds[name]) for name in names]
                ratio = values[0] / values[1] if values[1] else float("nan")
                print(f"{label:40}" + "".join(f"{v:16.2f}" for v in values) + f"{ratio:10.2f}")
        finally:
            for service in reversed(services):
                service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

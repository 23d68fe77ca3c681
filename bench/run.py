"""`make bench`: what the gateway costs on top of talking to vLLM directly, measured side
by side with LiteLLM's proxy on this machine, and written to docs/benchmarks.md.

    .venv/bin/python bench/run.py                 # the full run: 5 rounds (8-11 minutes)
    .venv/bin/python bench/run.py --quick         # 1 round, shorter runs (~1.5 minutes)
    .venv/bin/python bench/run.py --with-litellm  # install LiteLLM first when it is absent
    .venv/bin/python bench/run.py --py-spy PATH   # then profile the gateway at 16 connections

Needs wrk (Debian's package; run as root with apt-get, it installs it, else it says how).

One process each: the fixed-response upstream (bench/upstream.py), TalkTuah on the
production path (auth, rate limits far above the load, metrics and access log on, the log
going to a file), a second TalkTuah with three backends configured (that upstream as
`default`, plus a replica of it and an upstream serving another model, added with
`manage.py backend add`) and, when installed in bench/.venv-litellm, LiteLLM's proxy in
front of the same upstream. The gateways under test are pinned to one core; wrk, the
stream client (this process) and the upstreams to the other. Every figure is the median
of the rounds; ratios to direct are taken within a round, then their median.

This file is the command line; the rest lives beside it, one module per concept:
plan.py (what is measured and the targets: issue 6's and several backends'), stack.py
(the services under test, started by processes.py; LiteLLM's set up by litellm_proxy.py),
cpu.py (core pinning, other processes' CPU and steal), rounds.py (the rounds: wrk.py for the
non-streaming load, streams.py and its stream_client.py for the streams), report.py
(docs/benchmarks.md, with stats.py) and profiling.py (--py-spy).
"""

import argparse
import dataclasses
import datetime
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

# Sibling imports: run as a script (`python bench/run.py`, as `make bench` does), this
# file's folder is first on sys.path, so the modules beside it import by their own names.
from cpu import calibrate, pick_cores
from litellm_proxy import litellm_binary
from plan import FULL, HOLD_STREAMS, QUICK, ROOT
from processes import BenchError, Service
from profiling import profile
from report import read_appended, read_figures, read_machine, render
from rounds import measure
from stack import start_stack
from wrk import ensure_wrk, wrk_version

DOC = ROOT / "docs" / "benchmarks.md"


def raise_open_files(wanted: int) -> None:
    """Up to `wanted` open files, for this process and the services it starts (they
    inherit the limit): in the hold test the gateway holds two sockets for each of the
    1,000 streams (its client's and the upstream's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < 2 * HOLD_STREAMS + 200:
        print(f"warning: only {target} open files allowed; the hold test needs ~2,200")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, short runs")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5, quick 2)")
    parser.add_argument("--with-litellm", action="store_true", help="install LiteLLM if absent")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--output", type=Path, default=DOC, help="the Markdown file written")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--py-spy", metavar="PATH", help="also profile the gateway at 16 connections with py-spy"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = dataclasses.replace(
        plan, rounds=args.rounds or plan.rounds, duration=args.duration or plan.duration
    )
    command = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    if os.environ.get("MAKELEVEL"):
        command = f"make bench ({command})"

    # A SIGTERM ends the run like Ctrl-C: the finally below stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, t0 = datetime.datetime.now(datetime.UTC), time.monotonic()
    try:
        wrk_binary = ensure_wrk()
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 2
    wrk_printed = wrk_version(wrk_binary)
    litellm = None if args.no_litellm else litellm_binary(args.with_litellm)
    if args.no_litellm:
        print("LiteLLM skipped: --no-litellm")
    raise_open_files(65536)
    cores = pick_cores()
    if cores:
        os.sched_setaffinity(0, {cores[1]})  # this process, wrk and the upstream
    print(
        f"cores: gateway {cores[0]}, load and upstream {cores[1]}" if cores else "cores: unpinned"
    )

    services: list[Service] = []
    logs = Path(tempfile.mkdtemp(prefix="talktuah-bench-"))
    try:
        try:
            stack = start_stack(logs, cores, litellm, services)
            print(
                f"upstream :{stack.upstream.port} (and :{stack.extra_upstreams[0].port}, "
                f":{stack.extra_upstreams[1].port}), TalkTuah :{stack.gateway.port} (pid "
                f"{stack.gateway.pid}), with 3 backends :{stack.backends.port} (pid "
                f"{stack.backends.pid})"
                + (f", LiteLLM :{stack.litellm.port}" if stack.litellm else "")
            )
            gateway_core = cores[0] if cores else None
            before = calibrate(gateway_core)
            print(f"CPU calibration: {before:.1f} ms for the reference workload")
            results = measure(stack, plan, wrk_binary, logs, cores)
            results.calibration = (before, calibrate(gateway_core))
            profile_text = ""
            if args.py_spy:
                target = stack.targets()[1]
                profile_text = profile(args.py_spy, wrk_binary, target, stack.gateway, 10, logs)
        except BenchError as exc:
            print(f"\nbench failed: {exc}", file=sys.stderr)
            args.keep_logs = True
            return 1
        finally:
            for service in reversed(services):
                service.stop()
        access_lines = sum(
            1 for line in stack.gateway.log.read_text(errors="replace").splitlines()
            if '"endpoint":' in line
        )  # fmt: skip
        earlier = args.output.read_text() if args.output.exists() else None
        text = render(
            results,
            stack,
            plan,
            command=command,
            started=started,
            elapsed=time.monotonic() - t0,
            cores=cores,
            wrk_version=wrk_printed,
            access_lines=access_lines,
            previous=read_figures(earlier) if earlier is not None else None,
            previous_machine=read_machine(earlier) if earlier is not None else None,
        )
        # The sections other benchmarks appended to the earlier report (the fairness
        # figures) stay at the end of the new one.
        appended = read_appended(earlier) if earlier is not None else ""
        text += f"\n\n{appended}\n" if appended else ""
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print("\n" + text)
        print(f"written to {args.output}")
        if profile_text:
            (logs / "profile-summary.txt").write_text(profile_text)
            print("\n" + profile_text)
    except BaseException:
        args.keep_logs = True
        raise
    finally:
        if args.keep_logs:
            print(f"\nlogs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

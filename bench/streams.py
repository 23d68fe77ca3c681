"""The streaming measurements, made with the stream client: time to first token, total
time and gaps between tokens of streams one after another and 64 at once; new streams'
time to first token while 256 saturating streams keep the worker busy; and the hold
test, 1,000 streams open at once on one TalkTuah worker and what they cost in memory."""

import asyncio
import dataclasses
import math
import re
import statistics
import time
from dataclasses import dataclass

from cpu import cpu_snapshot, foreign_share
from plan import (
    CHAT_PATH,
    HOLD_GAP_MS,
    SATURATE_BURST,
    SATURATE_EVENTS,
    SATURATE_RAMP,
    UPSTREAM_CHUNKS,
    Target,
    chat_body,
)
from processes import Service, http_get
from stats import percentile
from stream_client import StreamClient, StreamSample


def client_of(target: Target) -> StreamClient:
    """A stream client for `target`'s chat endpoint."""
    return StreamClient(target.port, target.auth, CHAT_PATH)


async def run_streams(target: Target, concurrency: int, per_client: int) -> list[StreamSample]:
    """`concurrency` clients at once, each streaming `per_client` times in a row."""
    clients = [client_of(target) for _ in range(concurrency)]
    # Connections first, so a sample's time is the request's, not the TCP handshake's.
    await asyncio.gather(*(client.connect() for client in clients))
    body = chat_body(stream=True, max_tokens=UPSTREAM_CHUNKS)

    async def one(client: StreamClient) -> list[StreamSample]:
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


def measure_streams(target: Target, concurrency: int, per_client: int) -> StreamStats:
    before = cpu_snapshot()
    samples = asyncio.run(run_streams(target, concurrency, per_client))
    return stream_stats(samples, foreign_share(before, cpu_snapshot()))


# --- saturating streams ---------------------------------------------------------------


@dataclass(frozen=True)
class Saturation:
    ttft_p50: float  # ms, of the streams started after the ramp
    ttft_p99: float
    events_per_s: float  # content events all clients read a second, the ramp's too
    streams: int  # counted (started after the ramp)
    errors: int  # among every stream, the ramp's too
    first_error: str
    foreign: float


async def saturate(target: Target, clients: int, seconds: float) -> Saturation:
    """`clients` closed-loop clients, each on its keep-alive connection streaming
    SATURATE_EVENTS events with no gap one stream after another, for SATURATE_RAMP
    seconds and then `seconds` more. Each new stream is a new request arriving at a busy
    worker: its time to first token is how long accepting, authenticating and admitting
    it waited behind the other streams' chunks."""
    body = chat_body(
        stream=True,
        max_tokens=SATURATE_EVENTS,
        vllm_xargs={"bench_gap_ms": 0, "bench_burst": SATURATE_BURST},
    )
    connections = [client_of(target) for _ in range(clients)]
    await asyncio.gather(*(client.connect() for client in connections))
    counted: list[StreamSample] = []
    errors: list[str] = []
    events = 0
    begun = time.perf_counter()
    measured_from, end = begun + SATURATE_RAMP, begun + SATURATE_RAMP + seconds

    async def loop(client: StreamClient) -> None:
        nonlocal events
        while (started := time.perf_counter()) < end:
            # light: the client parses only up to the first token, so that it (on the
            # core it shares with the upstream) costs less than what it measures.
            sample = await client.stream(body, light=True)
            if sample.error:
                errors.append(sample.error)
                continue
            events += len(sample.gaps) + 1
            if started >= measured_from:
                counted.append(sample)

    try:
        await asyncio.gather(*(loop(client) for client in connections))
    finally:
        for client in connections:
            client.close()
    elapsed = time.perf_counter() - begun
    ttfts = [sample.ttft for sample in counted]
    return Saturation(
        ttft_p50=percentile(ttfts, 50) * 1000,
        ttft_p99=percentile(ttfts, 99) * 1000,
        events_per_s=events / elapsed,
        streams=len(counted),
        errors=len(errors),
        first_error=errors[0] if errors else "",
        foreign=0.0,
    )


def measure_saturation(target: Target, clients: int, seconds: float) -> Saturation:
    before = cpu_snapshot()
    found = asyncio.run(saturate(target, clients, seconds))
    return dataclasses.replace(found, foreign=foreign_share(before, cpu_snapshot()))


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
    """Opens `wanted` slow streams through `gateway`, measures its memory while they are
    all open, then hangs up and checks that the gateway lets them all go."""
    before = int(statistics.median(await rss_samples(gateway, 5, 0.2)))
    body = chat_body(stream=True, max_tokens=600, vllm_xargs={"bench_gap_ms": HOLD_GAP_MS})
    loop = asyncio.get_running_loop()
    clients: list[StreamClient] = []
    tasks: list[asyncio.Task[StreamSample]] = []
    errors: list[str] = []
    opened = 0
    started = time.perf_counter()
    try:
        # In batches, as clients arrive, not 1,000 SYNs at once into the listen backlog.
        for offset in range(0, wanted, 100):
            firsts = []
            for _ in range(min(100, wanted - offset)):
                client, first = client_of(target), loop.create_future()
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

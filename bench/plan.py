"""What a benchmark run measures and what it is judged against: the endpoints under test
and the request they get, the load levels, the upstream's pace, the targets of issue 6
(and of "Several vLLM backends", and issue 24's saturating streams), and the two plans
(the full run and --quick)."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

MODEL = "demo-model"
OTHER_MODEL = "bench-other"  # served by the third backend of the 3-backend gateway
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_CHUNKS = 10  # content chunks per stream
UPSTREAM_GAP_MS = 20.0  # between chunks, as a fast model streams (50 tokens/s)
HOLD_GAP_MS = 1000  # held streams trickle one chunk a second
NOISY = 0.10  # others' share of the machine's CPU (processes, steal) above which a run is repeated
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

# The targets of "Tail latency" (issue 12), ratios within one run so they hold on any
# machine: overhead p99 at 1 connection at most TAIL_FACTOR x the overhead p50 (and below
# LiteLLM's p99 overhead); TTFT p99 at 64 streams at most TTFT64_FACTOR x direct's plus
# TTFT64_SLACK_MS; gaps between chunks p99 at 64 streams within GAP64_FACTOR of direct's;
# and the p50 figures and req/s no worse than the previous run in docs/benchmarks.md (by
# NO_WORSE, after dividing out the two machines' CPU calibration figures).
TAIL_FACTOR = 3.0
TTFT64_FACTOR = 5.0
TTFT64_SLACK_MS = 10.0
GAP64_FACTOR = 1.10
NO_WORSE = 1.10
# The reference workload's time after the run over before it (or before over after)
# beyond which the machine's speed changed during the run: the report says so, and does
# not compare its calibrated figures with the previous run's.
UNSTEADY_CALIBRATION = 1.25

# The target of "Several vLLM backends": the gateway's overhead (p50 at 1 connection,
# over direct) with three backends configured, at most this times the one-backend one.
BACKENDS_TARGET = "TalkTuah, 3 backends"
BACKENDS_FACTOR = 1.10

# Issue 24, fair inside the gateway: SATURATE_STREAMS clients at once, each streaming
# SATURATE_EVENTS content events with no gap between them (the upstream writes
# SATURATE_BURST of them at a time, so it costs little per event and the gateway is what
# saturates), one stream after another for Plan.saturate seconds; a new request's time
# to first token p99 through the gateway at most SATURATE_FACTOR x direct's, in the same
# round. Streams that started in the first SATURATE_RAMP seconds are not counted: they
# are the crowd of all clients arriving at once (the 64-stream figures measure that).
SATURATE_STREAMS = 256
SATURATE_EVENTS = 200
SATURATE_BURST = 20
SATURATE_RAMP = 1.0
SATURATE_FACTOR = 2.0
SATURATE_TARGETS = ("direct", "TalkTuah")  # not LiteLLM: it takes minutes at 256


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: int  # seconds per wrk run
    warmup: int  # seconds of wrk per target before the rounds
    single_streams: int  # streams one after another at concurrency 1
    waves: int  # streams per client at concurrency 64
    hold: int  # streams held open at once
    repeats: int  # at most this many measurements taken again on a busy machine
    saturate: float  # seconds of saturating streams per target and round (after the ramp)


FULL = Plan(
    rounds=5,
    duration=5,
    warmup=3,
    single_streams=20,
    waves=3,
    hold=HOLD_STREAMS,
    repeats=20,
    saturate=5,
)
QUICK = Plan(
    rounds=1,
    duration=2,
    warmup=1,
    single_streams=8,
    waves=1,
    hold=HOLD_STREAMS,
    repeats=6,
    saturate=2,
)


@dataclass(frozen=True)
class Target:
    """One endpoint under test: the upstream itself ("direct"), TalkTuah (with one
    backend or three) or LiteLLM."""

    name: str
    port: int
    auth: str  # the Authorization header's value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


def chat_body(**extra: Any) -> bytes:
    """The chat request every target gets, with `extra` fields (stream, max_tokens, ...)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]}
    return json.dumps(body | extra, separators=(",", ":")).encode()

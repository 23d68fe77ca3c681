"""The rounds of a run: a warm-up, then in each round wrk against every target at every
connection count, streams at every concurrency and 256 saturating streams direct and
through TalkTuah (a run is measured again when others took much of the CPU, keeping the
quietest), then once the hold test; what they measured is a Results, the report's
input."""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from cpu import cpu_snapshot, foreign_share, sharing_core
from plan import (
    BACKENDS_TARGET,
    CONNECTIONS,
    NOISY,
    REPEATS_EACH,
    SATURATE_STREAMS,
    SATURATE_TARGETS,
    STREAM_CONCURRENCY,
    Plan,
    Target,
)
from stack import Stack
from streams import (
    Hold,
    Saturation,
    StreamStats,
    hold_streams,
    measure_saturation,
    measure_streams,
    run_streams,
    saturate,
)
from wrk import Load, run_wrk


@dataclass
class Results:
    loads: dict[tuple[int, int, str], Load] = field(default_factory=dict)  # round, conns, name
    streams: dict[tuple[int, int, str], StreamStats] = field(default_factory=dict)
    saturation: dict[tuple[int, str], Saturation] = field(default_factory=dict)  # round, name
    hold: Hold | None = None
    foreign: float = 0.0  # over the whole measurement
    repeats: int = 0  # measurements taken again because the machine was busy
    # The CPU calibration (bench/cpu.py calibrate) on the gateway's core, ms, before and
    # after the measurements.
    calibration: tuple[float, float] = (float("nan"), float("nan"))


def in_turn(targets: list[Target], index: int) -> list[Target]:
    """The targets in round `index`'s order: odd rounds take the two TalkTuah gateways
    the other way round, so neither is always the one measured right after the other
    (their figures are compared to within 10%)."""
    names = [target.name for target in targets]
    if index % 2 == 0 or BACKENDS_TARGET not in names:
        return targets
    one, three = names.index("TalkTuah"), names.index(BACKENDS_TARGET)
    swapped = list(targets)
    swapped[one], swapped[three] = targets[three], targets[one]
    return swapped


class Measured(Protocol):
    @property
    def foreign(self) -> float:
        """The share of the machine's CPU others took meanwhile."""


def quietest[M: Measured](take: Callable[[], M], results: Results, plan: Plan) -> M:
    """A measurement, taken again while others took more than NOISY of the CPU (another
    program's burst, the hypervisor's steal) at most REPEATS_EACH times and within the
    run's budget of repeats; the quietest of them."""
    found = take()
    for _ in range(REPEATS_EACH):
        if found.foreign <= NOISY or results.repeats >= plan.repeats:
            break
        results.repeats += 1
        print(f"  (others took {found.foreign:.0%} of the CPU: again)")
        again = take()
        found = again if again.foreign < found.foreign else found
    return found


def measure(
    stack: Stack, plan: Plan, wrk_binary: str, logs: Path, cores: tuple[int, int] | None
) -> Results:
    targets = stack.targets()
    results = Results()
    upstreams = [stack.upstream.pid, *(service.pid for service in stack.extra_upstreams)]

    def alone(concurrency: int) -> contextlib.AbstractContextManager[None]:
        """One request at a time: every process on the gateway's core (cpu.sharing_core)."""
        return sharing_core(cores, upstreams) if concurrency == 1 else contextlib.nullcontext()

    begun = cpu_snapshot()
    print(f"\nwarm-up: {plan.warmup} s of wrk at 16 connections and a few streams per target")
    for target in targets:
        run_wrk(wrk_binary, target, 16, plan.warmup, logs)
        asyncio.run(run_streams(target, 4, 2))
    # The first saturating run after start-up had TTFTs of seconds (a cold worker taking
    # 256 connections at once): warm that up too.
    saturated = [target for target in targets if target.name in SATURATE_TARGETS]
    for target in saturated:
        asyncio.run(saturate(target, SATURATE_STREAMS, plan.warmup))
    for index in range(plan.rounds):
        print(f"\n== round {index + 1}/{plan.rounds}: non-streaming, wrk {plan.duration} s each")
        for connections in CONNECTIONS:
            with alone(connections):
                for target in in_turn(targets, index):
                    load = quietest(
                        partial(run_wrk, wrk_binary, target, connections, plan.duration, logs),
                        results,
                        plan,
                    )
                    results.loads[index, connections, target.name] = load
                    print(
                        f"  {connections:>3} conn  {target.name:<20} {load.rps:>9,.0f} req/s  "
                        f"p50 {load.p50_ms:8.2f} ms  p99 {load.p99_ms:8.2f} ms  "
                        f"(others: {load.foreign:.0%} CPU)"
                    )
                    if not load.valid:
                        print(f"  !!! INVALID: {target.name} at {connections}: {load.problems}")
        print(f"== round {index + 1}/{plan.rounds}: streaming")
        for concurrency in STREAM_CONCURRENCY:
            with alone(concurrency):
                per_client = plan.single_streams if concurrency == 1 else plan.waves
                for target in in_turn(targets, index):
                    stats = quietest(
                        partial(measure_streams, target, concurrency, per_client), results, plan
                    )
                    results.streams[index, concurrency, target.name] = stats
                    print(
                        f"  {concurrency:>3} streams {target.name:<20} TTFT p50 "
                        f"{stats.ttft_p50:7.2f} ms  p99 {stats.ttft_p99:7.2f} ms  "
                        f"total p50 {stats.total_p50:7.1f} ms  "
                        f"gaps p50 {stats.gap_p50:5.1f} / p99 {stats.gap_p99:5.1f} ms  "
                        f"(other: {stats.foreign:.0%})"
                    )
                    if stats.errors:
                        print(
                            f"  !!! INVALID: {stats.errors}/{stats.streams} {target.name} streams "
                            f"failed: {stats.first_error}"
                        )
        print(f"== round {index + 1}/{plan.rounds}: {SATURATE_STREAMS} saturating streams")
        for target in saturated if index % 2 == 0 else saturated[::-1]:
            found = quietest(
                partial(measure_saturation, target, SATURATE_STREAMS, plan.saturate),
                results,
                plan,
            )
            results.saturation[index, target.name] = found
            print(
                f"  {SATURATE_STREAMS} streams {target.name:<20} TTFT p50 {found.ttft_p50:7.1f} "
                f"ms  p99 {found.ttft_p99:7.1f} ms  {found.events_per_s:>9,.0f} events/s  "
                f"({found.streams:,} streams; other: {found.foreign:.0%})"
            )
            if found.errors:
                print(
                    f"  !!! INVALID: {found.errors} {target.name} saturating streams failed: "
                    f"{found.first_error}"
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

"""docs/benchmarks.md: the Markdown report of a run, rendered from its Results (the verdict
on each target of issue 6, of several backends and of issue 24's saturating streams, the
tables of medians across rounds, how it was measured, and the per-round figures), and
what an earlier report holds that the next run keeps: its figures, and the sections other
benchmarks wrote after its end."""

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litellm_proxy import LITELLM_INSTALL
from plan import (
    BACKENDS_FACTOR,
    BACKENDS_TARGET,
    CONNECTIONS,
    GAP64_FACTOR,
    HOLD_GAP_MS,
    HOLD_KIB_PER_STREAM,
    HOLD_STREAMS,
    LITELLM_FACTOR,
    MODEL,
    NO_WORSE,
    NOISY,
    OTHER_MODEL,
    OVERHEAD_P50_MS,
    OVERHEAD_P99_MS,
    REPEATS_EACH,
    ROOT,
    SATURATE_BURST,
    SATURATE_EVENTS,
    SATURATE_FACTOR,
    SATURATE_RAMP,
    SATURATE_STREAMS,
    TAIL_FACTOR,
    TTFT64_FACTOR,
    TTFT64_SLACK_MS,
    TTFT_ADDED_MS,
    UNSTEADY_CALIBRATION,
    UPSTREAM_CHUNKS,
    UPSTREAM_GAP_MS,
    Plan,
)
from rounds import Results
from stack import Stack
from stats import median


def ms(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f} ms"


def signed_ms(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f} ms"


# The figures a report keeps for the next run to compare with, in an HTML comment at its
# end: (key, what it is, whether higher is better). Latencies are divided by the run's
# CPU calibration, rates multiplied by it, so runs on different machines compare.
NO_WORSE_FIGURES = (
    ("overhead_p50_1", "overhead p50 at 1 connection / calibration", False),
    ("rps_16", "req/s at 16 connections x calibration", True),
    ("ttft_p50_64", "TTFT p50 at 64 streams / calibration", False),
)
FIGURES_MARK = "<!-- bench figures: {} -->"


def _kept(text: str) -> dict[str, object]:
    """What an earlier report kept at its end (empty when it has none)."""
    _, mark, tail = text.rpartition(FIGURES_MARK.split("{}")[0])
    if mark:
        with contextlib.suppress(ValueError):
            found = json.loads(tail.split(" -->", 1)[0])
            if isinstance(found, dict):
                return found
    return {}


def read_figures(text: str) -> dict[str, float]:
    """The figures kept at the end of an earlier report (empty when it has none)."""
    return {k: float(v) for k, v in _kept(text).items() if isinstance(v, int | float)}


def read_appended(text: str) -> str:
    """What follows an earlier report's figures (its last generated line): sections that
    other benchmarks wrote (`make bench-fairness`, `make bench-fairness-vllm`), which a
    new run keeps at its end; empty when there are none."""
    start = text.rfind(FIGURES_MARK.split("{}")[0])
    if start < 0:
        return ""
    end = text.find("\n", start)
    return "" if end < 0 else text[end:].strip()


def read_machine(text: str) -> str | None:
    """The CPU an earlier report was measured on: kept with its figures, or (reports
    written before that) named in its issue 6 heading."""
    machine = _kept(text).get("machine")
    if isinstance(machine, str):
        return machine
    named = re.search(r"\(this one: (.+?), calibration", text)
    return named.group(1) if named else None


def run_figures(report: "Report", names: list[str], calibration: float) -> dict[str, float]:
    return {
        "calibration_ms": calibration,
        "overhead_p50_1": report.load_diff(1, "TalkTuah", "p50_ms") / calibration,
        "rps_16": report.load(16, "TalkTuah", "rps") * calibration,
        "ttft_p50_64": report.stream(64, "TalkTuah", "ttft_p50") / calibration,
    }


class Report:
    """A run's figures, each the median across rounds; differences to another target and
    ratios are taken within each round, then their median."""

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
        """The rounds in which none of these runs had others' load above NOISY."""
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

    def overhead_ratio(
        self, connections: int, name: str, base: str, attr: str, rounds: Sequence[int] | None = None
    ) -> float:
        """`name`'s overhead over direct divided by `base`'s, both within a round."""
        loads = self.results.loads
        return median(
            [
                (
                    getattr(loads[r, connections, name], attr)
                    - getattr(loads[r, connections, "direct"], attr)
                )
                / (
                    getattr(loads[r, connections, base], attr)
                    - getattr(loads[r, connections, "direct"], attr)
                )
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def stream(self, concurrency: int, name: str, attr: str) -> float:
        return median(
            [getattr(self.results.streams[r, concurrency, name], attr) for r in self.rounds]
        )

    def stream_diff(
        self,
        concurrency: int,
        name: str,
        attr: str,
        rounds: Sequence[int] | None = None,
        base: str = "direct",
    ) -> float:
        return median(
            [
                getattr(self.results.streams[r, concurrency, name], attr)
                - getattr(self.results.streams[r, concurrency, base], attr)
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def stream_invalid(self, concurrency: int, name: str) -> str:
        failed = sum(self.results.streams[r, concurrency, name].errors for r in self.rounds)
        return f" **INVALID: {failed} streams failed**" if failed else ""

    def saturation(self, name: str, attr: str) -> float:
        return median([getattr(self.results.saturation[r, name], attr) for r in self.rounds])

    def saturation_ratio(
        self, name: str, attr: str, rounds: Sequence[int] | None = None, base: str = "direct"
    ) -> float:
        return median(
            [
                getattr(self.results.saturation[r, name], attr)
                / getattr(self.results.saturation[r, base], attr)
                for r in (self.rounds if rounds is None else rounds)
            ]
        )

    def saturation_invalid(self, name: str) -> str:
        failed = sum(self.results.saturation[r, name].errors for r in self.rounds)
        return f" **INVALID: {failed} streams failed**" if failed else ""

    def quiet_saturation(self, *names: str) -> list[int]:
        """The rounds in which none of these saturation runs had others' load above NOISY."""
        table = self.results.saturation
        return [r for r in self.rounds if all(table[r, n].foreign <= NOISY for n in names)]


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
    results: Results,
    stack: Stack,
    plan: Plan,
    *,
    command: str,
    started: datetime.datetime,
    elapsed: float,
    cores: tuple[int, int] | None,
    wrk_version: str,
    access_lines: int,
    previous: dict[str, float] | None = None,
    previous_machine: str | None = None,
) -> str:
    """The report's Markdown. `command` is how the run was started, `access_lines` the
    number of lines the gateway's access log got, `previous` the figures of the report
    this one replaces (read_figures), for the "no worse than before" targets, and
    `previous_machine` the CPU it ran on (read_machine)."""
    names = [target.name for target in stack.targets()]
    report = Report(results, names, plan)
    has_litellm = "LiteLLM" in names
    label = {"direct": "direct to the upstream", "TalkTuah": "TalkTuah (1 backend)"}
    label[BACKENDS_TARGET] = BACKENDS_TARGET
    label["LiteLLM"] = f"LiteLLM {stack.litellm_version} proxy"
    out: list[str] = []
    add = out.append

    add("# Benchmarks: TalkTuah against a direct connection and LiteLLM\n")
    add(
        "Generated by `make bench` (`bench/run.py`); do not edit by hand (the sections "
        "after the per-round figures come from other benchmarks, and `make bench` keeps "
        "them). What the gateway "
        "costs on top of talking to vLLM directly, and the same for LiteLLM's proxy, "
        "measured side by side in one run on one machine against a fast fixed-response "
        "upstream (`bench/upstream.py`), so every millisecond is the gateway's own.\n"
    )

    foreign = report.results.foreign
    if foreign > 0.05:
        add(
            f"> **Noisy machine:** other processes and the hypervisor's steal took "
            f"{foreign:.0%} of this machine's CPU "
            "while it measured (see the per-round figures), so latencies and rates here are "
            "worse and more spread than on a quiet machine.\n"
        )

    # -- targets
    calibration = median(list(report.results.calibration))
    first, last = report.results.calibration
    unsteady = max(first, last) / min(first, last) > UNSTEADY_CALIBRATION
    figures = run_figures(report, names, calibration)
    add("## Targets\n")
    add(
        "Ratios within this run, so they hold on any machine (issue 12, tail latency; "
        "issue 6's LiteLLM factor; several backends). The verdict is on every round; the "
        f'"quiet rounds" column takes only the rounds in which other processes and the '
        f"hypervisor's steal took at most {NOISY:.0%} of the CPU during every run "
        "compared.\n"
    )
    add(
        f"CPU calibration of this run: **{calibration:.1f} ms** for bench/cpu.py's reference "
        f"workload on the gateway's core ({report.results.calibration[0]:.1f} ms before the "
        f"measurements, {report.results.calibration[1]:.1f} ms after; lower is faster). "
        "Absolute figures below come from this machine; to compare with another run, "
        "divide latencies by its calibration (multiply rates by it).\n"
    )
    if unsteady:
        add(
            f"> **Unsteady machine:** the reference workload took {first:.1f} ms before and "
            f"{last:.1f} ms after the measurements ({max(first, last) / min(first, last):.2f}x): "
            "the CPU's speed changed during the run (other tenants of the host, its clock), "
            "which no process list shows. The comparisons with the previous run cannot be "
            "trusted; the ratios within the run suffer less (the targets are measured in "
            "turn, round after round) but are more spread than on a steady machine.\n"
        )
    add("| target | measured | verdict | quiet rounds only |")
    add("| --- | --- | --- | --- |")
    total = len(report.rounds)

    def quiet_cell(rounds: list[int], met: bool, text: str) -> str:
        if not rounds:
            return "no quiet round"
        return f"{text} in {len(rounds)} of {total}: {'met' if met else 'not met'}"

    def verdict(met: bool, value: float, text: str = "") -> str:
        if math.isnan(value):
            return "not measured"
        return "**met**" if met else f"**not met**{': ' + text if text else ''}"

    # Overhead p99 at 1 connection against 3x the overhead p50, within each round.
    def tail(rounds: Sequence[int] | None = None) -> tuple[float, float, float]:
        p50 = report.load_diff(1, "TalkTuah", "p50_ms", rounds=rounds)
        p99 = report.load_diff(1, "TalkTuah", "p99_ms", rounds=rounds)
        return p50, p99, p99 / p50 if p50 > 0 else math.nan

    p50, p99, factor = tail()
    quiet = report.quiet_rounds(False, 1, "TalkTuah", "direct")
    calm = tail(quiet)[2]
    add(
        f"| overhead p99 <= {TAIL_FACTOR:.0f}x overhead p50, 1 connection | {factor:.2f}x "
        f"({signed_ms(p99, 3)} vs {signed_ms(p50, 3)}){report.invalid(1, 'TalkTuah')}"
        f"{report.invalid(1, 'direct')} | {verdict(factor <= TAIL_FACTOR, factor)} "
        f"| {quiet_cell(quiet, calm <= TAIL_FACTOR, f'{calm:.2f}x')} |"
    )
    if has_litellm:
        theirs = report.load_diff(1, "LiteLLM", "p99_ms")
        quiet = report.quiet_rounds(False, 1, "TalkTuah", "LiteLLM", "direct")
        calm_ours = report.load_diff(1, "TalkTuah", "p99_ms", rounds=quiet)
        calm_theirs = report.load_diff(1, "LiteLLM", "p99_ms", rounds=quiet)
        add(
            f"| overhead p99 below LiteLLM's, 1 connection | {signed_ms(p99, 3)} vs "
            f"{signed_ms(theirs, 3)} | {verdict(p99 < theirs, theirs)} "
            f"| {quiet_cell(quiet, calm_ours < calm_theirs, signed_ms(calm_ours, 3))} |"
        )
    else:
        add(
            "| overhead p99 below LiteLLM's, 1 connection | LiteLLM not measured in this run "
            "| not measured | |"
        )

    # TTFT p99 at 64 streams against 5x direct's + 10 ms, within each round.
    def ttft64(rounds: Sequence[int] | None = None) -> tuple[float, float]:
        rounds = report.rounds if rounds is None else rounds
        ours = median([report.results.streams[r, 64, "TalkTuah"].ttft_p99 for r in rounds])
        limits = [
            TTFT64_FACTOR * report.results.streams[r, 64, "direct"].ttft_p99 + TTFT64_SLACK_MS
            for r in rounds
        ]
        return ours, median(limits)

    ours, limit = ttft64()
    quiet = report.quiet_rounds(True, 64, "TalkTuah", "direct")
    calm_ours, calm_limit = ttft64(quiet)
    add(
        f"| TTFT p99 at 64 streams <= {TTFT64_FACTOR:.0f}x direct's + {TTFT64_SLACK_MS:.0f} ms "
        f"| {ms(ours)} (limit {ms(limit)}){report.stream_invalid(64, 'TalkTuah')} "
        f"| {verdict(ours <= limit, ours, f'{ours - limit:.1f} ms over')} "
        f"| {quiet_cell(quiet, calm_ours <= calm_limit, ms(calm_ours))} |"
    )

    def gaps64(rounds: Sequence[int] | None = None) -> float:
        rounds = report.rounds if rounds is None else rounds
        return median(
            [
                report.results.streams[r, 64, "TalkTuah"].gap_p99
                / report.results.streams[r, 64, "direct"].gap_p99
                for r in rounds
            ]
        )

    gap = gaps64()
    calm = gaps64(quiet)
    add(
        f"| gaps between chunks p99 at 64 streams within {GAP64_FACTOR - 1:.0%} of direct's "
        f"| {gap:.2f}x ({ms(report.stream(64, 'TalkTuah', 'gap_p99'), 1)} vs "
        f"{ms(report.stream(64, 'direct', 'gap_p99'), 1)}) | {verdict(gap <= GAP64_FACTOR, gap)} "
        f"| {quiet_cell(quiet, calm <= GAP64_FACTOR, f'{calm:.2f}x')} |"
    )
    if report.results.saturation:
        ratio = report.saturation_ratio("TalkTuah", "ttft_p99")
        quiet = report.quiet_saturation("TalkTuah", "direct")
        calm = report.saturation_ratio("TalkTuah", "ttft_p99", quiet)
        add(
            f"| TTFT p99 at {SATURATE_STREAMS} saturating streams <= {SATURATE_FACTOR:.0f}x "
            f"direct's | {ratio:.2f}x ({ms(report.saturation('TalkTuah', 'ttft_p99'), 0)} vs "
            f"{ms(report.saturation('direct', 'ttft_p99'), 0)})"
            f"{report.saturation_invalid('TalkTuah')}{report.saturation_invalid('direct')} "
            f"| {verdict(ratio <= SATURATE_FACTOR, ratio, f'{ratio - SATURATE_FACTOR:.2f}x over')} "
            f"| {quiet_cell(quiet, calm <= SATURATE_FACTOR, f'{calm:.2f}x')} |"
        )
    ours16 = report.load(16, "TalkTuah", "rps")
    if has_litellm:
        factor = report.load_ratio(16, "TalkTuah", "LiteLLM")
        theirs16 = report.load(16, "LiteLLM", "rps")
        short = (
            f"{LITELLM_FACTOR - factor:.1f}x short (~{LITELLM_FACTOR * theirs16 - ours16:,.0f} "
            "req/s more needed)"
        )
        quiet = report.quiet_rounds(False, 16, "TalkTuah", "LiteLLM")
        calm = report.load_ratio(16, "TalkTuah", "LiteLLM", rounds=quiet)
        add(
            f"| >= {LITELLM_FACTOR:.0f}x LiteLLM's req/s at 16 connections | {factor:.1f}x "
            f"({ours16:,.0f} vs {theirs16:,.0f} req/s)"
            f"{report.invalid(16, 'TalkTuah')}{report.invalid(16, 'LiteLLM')} "
            f"| {verdict(factor >= LITELLM_FACTOR, factor, short)} "
            f"| {quiet_cell(quiet, calm >= LITELLM_FACTOR, f'{calm:.1f}x')} |"
        )
    else:
        add(
            f"| >= {LITELLM_FACTOR:.0f}x LiteLLM's req/s at 16 connections | TalkTuah "
            f"{ours16:,.0f} req/s; LiteLLM not measured in this run | not measured | |"
        )
    if BACKENDS_TARGET in names:
        # Overheads over direct, divided within each round: the two gateways ran minutes
        # apart at most, so the machine's drift between rounds cancels out.
        ratio = report.overhead_ratio(1, BACKENDS_TARGET, "TalkTuah", "p50_ms")
        one = report.load_diff(1, "TalkTuah", "p50_ms")
        three = report.load_diff(1, BACKENDS_TARGET, "p50_ms")
        quiet = report.quiet_rounds(False, 1, BACKENDS_TARGET, "TalkTuah", "direct")
        calm = report.overhead_ratio(1, BACKENDS_TARGET, "TalkTuah", "p50_ms", rounds=quiet)
        add(
            f"| overhead with 3 backends within {BACKENDS_FACTOR - 1:.0%} of 1 backend (p50 at "
            f"1 connection) | {ratio:.3f}x ({signed_ms(three, 3)} vs {signed_ms(one, 3)})"
            f"{report.invalid(1, BACKENDS_TARGET)}{report.invalid(1, 'TalkTuah')} "
            f"| {verdict(ratio <= BACKENDS_FACTOR, ratio)} "
            f"| {quiet_cell(quiet, calm <= BACKENDS_FACTOR, f'{calm:.3f}x')} |"
        )
    # The p50 figures and req/s against the previous run, both divided by their calibration.
    for key, what, higher_is_better in NO_WORSE_FIGURES:
        now = figures.get(key, math.nan)
        before = previous.get(key, math.nan) if previous else math.nan
        if math.isnan(before) or math.isnan(now):
            add(f"| {what} no worse than the previous run | {now:.3f} | no earlier run | |")
            continue
        change = now / before if higher_is_better else before / now
        if previous_machine is not None and previous_machine != cpu_model():
            # The calibration is pure Python; the gateway's work is half system calls,
            # whose cost differs between CPUs: one commit measured 0.032 on an AMD EPYC and
            # 0.043 on an Intel Xeon, each run steady.
            add(
                f"| {what} no worse than the previous run (calibrated) | {now:.3f} "
                f"(before {before:.3f}: {change:.2f}x) | not comparable: the previous run "
                f"was on another CPU ({previous_machine}); `bench/ab.py REV` compares two "
                "revisions on one machine | |"
            )
            continue
        if unsteady:
            add(
                f"| {what} no worse than the previous run (calibrated) | {now:.3f} "
                f"(before {before:.3f}: {change:.2f}x) | not comparable: the machine's speed "
                "changed during this run | |"
            )
            continue
        add(
            f"| {what} no worse than the previous run (calibrated) | {now:.3f} "
            f"(before {before:.3f}: {change:.2f}x) "
            f"| {verdict(change >= 1 / NO_WORSE, change, 'worse by more than noise')} | |"
        )
    hold = report.results.hold
    if hold is not None:
        per = hold.per_stream_kib
        held = hold.opened >= HOLD_STREAMS and not hold.first_error
        if held and per <= HOLD_KIB_PER_STREAM:
            text = f"**met** ({HOLD_KIB_PER_STREAM - per:.1f} KiB a stream to spare)"
        elif not held:
            text = f"**not met**: {hold.failed} of {hold.wanted} streams did not open"
        else:
            text = f"**not met**: {per - HOLD_KIB_PER_STREAM:.1f} KiB a stream over"
        add(
            f"| {HOLD_STREAMS:,} concurrent open streams on one worker, <= "
            f"{HOLD_KIB_PER_STREAM:.0f} KiB each | {hold.opened:,} held, {per:.1f} KiB a "
            f"stream | {text} | (measured once) |"
        )
    add("")
    add(
        f"Issue 6's absolute targets, which depend on the machine (this one: {cpu_model()}, "
        f"calibration {calibration:.1f} ms):\n"
    )
    add("| target | measured | verdict |")
    add("| --- | --- | --- |")
    for attr, limit, what in (
        ("p50_ms", OVERHEAD_P50_MS, "overhead p50"),
        ("p99_ms", OVERHEAD_P99_MS, "overhead p99"),
    ):
        value = report.load_diff(1, "TalkTuah", attr)
        add(
            f"| {what} <= {limit} ms at 1 connection | {signed_ms(value, 3)} "
            f"| {verdict_at_most(value, limit)} |"
        )
    ttft = report.stream_diff(1, "TalkTuah", "ttft_p50")
    add(
        f"| time to first token added <= {TTFT_ADDED_MS} ms (p50, 1 stream) | "
        f"{signed_ms(ttft, 3)}{report.stream_invalid(1, 'TalkTuah')} "
        f"| {verdict_at_most(ttft, TTFT_ADDED_MS)} |"
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
    differences = [(name, "direct", f"{name} minus / over direct") for name in names[1:]]
    if BACKENDS_TARGET in names:
        differences.append((BACKENDS_TARGET, "TalkTuah", "3 backends minus / over 1 backend"))
    for name, base, title in differences:
        cells = [
            signed_ms(report.load_diff(1, name, "p50_ms", base), 3),
            signed_ms(report.load_diff(1, name, "p99_ms", base), 3),
            f"{report.load_ratio(1, name, base):.3f}x",
        ]
        for connections in CONNECTIONS[1:]:
            cells += [
                f"{report.load_ratio(connections, name, base):.3f}x",
                signed_ms(report.load_diff(connections, name, "p50_ms", base)),
                signed_ms(report.load_diff(connections, name, "p99_ms", base)),
            ]
        add(f"| *{title}* | " + " | ".join(cells) + " |")
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
    differences = [(name, "direct", f"{name} minus direct") for name in names[1:]]
    if BACKENDS_TARGET in names:
        differences.append((BACKENDS_TARGET, "TalkTuah", "3 backends minus 1 backend"))
    for name, base, title in differences:

        def diff(concurrency: int, attr: str, name: str = name, base: str = base) -> float:
            return report.stream_diff(concurrency, name, attr, base=base)

        cells = [
            signed_ms(diff(1, "ttft_p50"), 3),
            signed_ms(diff(1, "total_p50"), 1),
            f"{diff(1, 'gap_p50'):+.1f} / {diff(1, 'gap_p99'):+.1f} ms",
            signed_ms(diff(64, "ttft_p50")),
            signed_ms(diff(64, "ttft_p99")),
            signed_ms(diff(64, "total_p50"), 1),
            f"{diff(64, 'gap_p50'):+.1f} / {diff(64, 'gap_p99'):+.1f} ms",
        ]
        add(f"| *{title}* | " + " | ".join(cells) + " |")
    add("")

    # -- saturating streams
    if report.results.saturation:
        add(f"## {SATURATE_STREAMS} saturating streams: a new request on a busy worker\n")
        add(
            f"Issue 24: while one worker relays many fast streams, accepting, authenticating "
            f"and admitting a new request must not wait behind the other streams' chunks. "
            f"{SATURATE_STREAMS} clients, each on its own keep-alive connection, stream one "
            "request after another (closed loop: a client sends its next request as its "
            f"stream ends, so {SATURATE_STREAMS} streams are always in flight and each new "
            f"request meets a worker busy with the others). A stream is {SATURATE_EVENTS} "
            "content events with no gap; the upstream writes them "
            f"{SATURATE_BURST} at a time (`vllm_xargs.bench_burst`), so it costs little per "
            "event and the gateway, which relays every event, is the process that "
            "saturates (its core at 100%), not the upstream. TTFT is from the request "
            "written to its first content event read: how long the new request waited "
            f"behind the relaying. Streams started in the first {SATURATE_RAMP:.0f} s are "
            "not counted (all clients arrive at once then; the 64-stream figures measure a "
            "crowd). The client counts the events after the first without parsing them: it "
            "shares its core with the upstream and must cost less than what it measures. "
            "Direct is the same load on the upstream alone, its TTFT what the upstream and "
            "the client take at this load; events/s is what all clients read a second "
            f"(through TalkTuah: what the one worker relayed). {plan.saturate:g} s a target "
            f"and round after a {plan.warmup} s warm-up run (a cold worker's first "
            "saturating run has TTFTs of seconds); median of the rounds, ratios within "
            "each round.\n"
        )
        add("| | TTFT p50 | TTFT p99 | events/s | streams counted (a round) | failed |")
        add("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in ("direct", "TalkTuah"):
            failed = sum(report.results.saturation[r, name].errors for r in report.rounds)
            add(
                f"| {label[name]} | {ms(report.saturation(name, 'ttft_p50'), 1)} "
                f"| {ms(report.saturation(name, 'ttft_p99'), 1)} "
                f"| {report.saturation(name, 'events_per_s'):,.0f} "
                f"| {report.saturation(name, 'streams'):,.0f} "
                f"| {failed}{' **INVALID**' if failed else ''} |"
            )
        add(
            f"| *TalkTuah over direct* | {report.saturation_ratio('TalkTuah', 'ttft_p50'):.2f}x "
            f"| {report.saturation_ratio('TalkTuah', 'ttft_p99'):.2f}x "
            f"| {report.saturation_ratio('TalkTuah', 'events_per_s'):.2f}x | | |"
        )
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
        f"both TalkTuah gateways and LiteLLM pinned to core {cores[0]}; wrk, the stream "
        f"client and the upstreams to core {cores[1]} (`sched_setaffinity`, as `taskset -c`), "
        f"except at 1 connection and 1 stream, where they join the gateways on core "
        f"{cores[0]}: one request at a time needs no second core, and a request that "
        "crosses cores waits for each idle one to wake, which on a virtual machine waits "
        "for the hypervisor (a request through a gateway crosses four times, a direct one "
        "none; bench/cpu.py `sharing_core`)"
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
        f"- Others took {foreign:.0%} of the machine's CPU during the measurements: "
        "other processes (all CPUs' user and system time less this run's own processes') "
        "and, on a virtual machine, the hypervisor (steal time: its other tenants ran on "
        'our CPUs); the per-round tables give it for each run ("other CPU"). A run during '
        f"which they took more than {NOISY:.0%} was taken again (at most {REPEATS_EACH} times, "
        f"{plan.repeats} in all), keeping the quietest: {report.results.repeats} repeated."
    )
    add(
        f"- Rounds: {plan.rounds}, each one wrk run of {plan.duration} s per target and "
        f"connection count (`wrk -t1 -cN --latency`, a Lua script for the POST and the "
        f"key), {plan.single_streams} streams one after another and {plan.waves} per "
        f"client at 64, {SATURATE_STREAMS} saturating streams for {plan.saturate:g} s "
        f"(direct and TalkTuah); after a {plan.warmup} s warm-up per target. Figures are medians "
        "of the rounds; differences and ratios are taken within each round, then their "
        "median. A wrk run with any non-2xx response (wrk counts status >= 400) or "
        "socket error, or a stream that failed, is marked **INVALID**."
    )
    add(
        "- TalkTuah: `manage.py serve --workers 1` (uvicorn, one process), `DEBUG=false`, "
        "SQLite and the local-memory cache in a temporary folder, upstream transport "
        f"{os.environ.get('UPSTREAM_TRANSPORT', 'aiohttp')}, one key "
        "(`create_api_key --rpm 100000000`) on every request, rate limits, Prometheus "
        f"metrics and the access log on (its lines go to a file: {access_lines:,} written); "
        "`BACKEND_CAPACITY` and `KEY_MAX_PARALLEL_REQUESTS` at 1,000,000, so the "
        "saturating and the held streams are all admitted at once (the fixed-response "
        "upstream has no batch to fill; `make bench-fairness` measures the queue)."
    )
    if BACKENDS_TARGET in names:
        add(
            f"- {BACKENDS_TARGET}: a second worker set up the same way with its own "
            "database and key, `VLLM_BASE_URL` at the same upstream (the backend "
            "`default`), and two more added with `manage.py backend add` before it "
            f"started: `replica`, another `bench/upstream.py` serving `{MODEL}`, and "
            f"`other`, one serving `{OTHER_MODEL}`. So every request is routed: by model "
            "(two of the three serve it), then the less busy of the two (power of two "
            "choices); the gateway polls each backend's `/health` and `/v1/models` every "
            "`BACKEND_POLL_SECONDS` (5 s) meanwhile. The hold test and `--py-spy` use the "
            "one-backend gateway."
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
    if report.results.saturation:
        add("")
        add(f"| round | target | {SATURATE_STREAMS} saturating streams: TTFT p50 | TTFT p99 "
            "| events/s | streams counted | other CPU | failed |")  # fmt: skip
        add("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for (index, name), found in sorted(report.results.saturation.items()):
            add(
                f"| {index + 1} | {name} | {ms(found.ttft_p50, 1)} | {ms(found.ttft_p99, 1)} "
                f"| {found.events_per_s:,.0f} | {found.streams:,} | {found.foreign:.0%} "
                f"| {found.errors} |"
            )
    add("\n</details>\n")
    kept: dict[str, float | str] = {**figures, "machine": cpu_model()}
    add(FIGURES_MARK.format(json.dumps(kept, sort_keys=True)))
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

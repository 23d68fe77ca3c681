"""Cores and CPU time: which two cores the run pins the gateway and the load to, and how
much of the machine's CPU others took meanwhile: other processes, and on a virtual
machine the hypervisor (steal time: the host ran other tenants on our CPUs). Either gives
noisy figures, so the rounds measure again when there was much of it."""

import contextlib
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The services this run started (this process and its children count through os.times).
_OUR_PIDS: list[int] = []


def count_as_ours(pid: int) -> None:
    """Counts a started service's CPU time as this run's, not as other processes'."""
    _OUR_PIDS.append(pid)


def pick_cores() -> tuple[int, int] | None:
    """(the gateway's core, the load's core), or None with fewer than two cores allowed."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def pin(pid: int, core: int) -> None:
    """Every thread of process `pid` onto `core` (sched_setaffinity moves one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), {core})


@contextlib.contextmanager
def sharing_core(cores: tuple[int, int] | None, pids: list[int]) -> Iterator[None]:
    """For a sequential measurement (1 connection, 1 stream): the load (this process, so
    the wrk and the stream client it runs) and the upstreams (`pids`) on the gateway's
    core, then back on the load's. A request then crosses no CPU boundary: on a virtual
    machine, waking an idle vCPU waits for the hypervisor, and a request through the
    gateway crosses four times (load, gateway, upstream, gateway, load) where a direct one
    crosses none. Measured on a shared 2-core VM: that put the gateway's 1-connection p99
    at 3.4-5.4 ms, against 1.9 ms with every process on one core (p50 1.0 against 0.9)."""
    if cores is None:
        yield
        return
    gateway_core, load_core = cores
    os.sched_setaffinity(0, {gateway_core})
    for pid in pids:
        pin(pid, gateway_core)
    try:
        yield
    finally:
        os.sched_setaffinity(0, {load_core})
        for pid in pids:
            pin(pid, load_core)


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    busy: float  # seconds of user + system time on all CPUs
    ours: float  # ... of which our processes'
    stolen: float  # seconds the hypervisor kept our CPUs for other tenants (steal)


def cpu_snapshot() -> CpuSnapshot:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    busy = sum(int(x) for x in fields[1:4]) / tick  # user, nice, system
    stolen = int(fields[8]) / tick if len(fields) > 8 else 0.0
    times = os.times()
    ours = times.user + times.system + times.children_user + times.children_system
    for pid in _OUR_PIDS:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += (int(stat[11]) + int(stat[12])) / tick
    return CpuSnapshot(time.monotonic(), busy, ours, stolen)


def foreign_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """The share of the machine's CPU that others took between two snapshots: other
    processes, and the hypervisor's steal (seen at 10-28% on a shared 2-core VM, where a
    1-connection p99 then doubled). Both make the figures noisy."""
    elapsed = (after.at - before.at) * (os.cpu_count() or 1)
    if elapsed <= 0:
        return 0.0
    # Each part on its own: our processes' time, counted apart, can come out above the
    # machine's user + system time (interrupt time), which must not hide the steal.
    others = max((after.busy - before.busy) - (after.ours - before.ours), 0.0)
    stolen = max(after.stolen - before.stolen, 0.0)
    return min((others + stolen) / elapsed, 1.0)


def _reference_work() -> None:
    """A fixed pure-Python workload shaped like a gateway's: JSON in and out, dicts and
    strings, a digest. Its duration is what one core of this machine does per unit."""
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "Hello!" * 8}]}
    for i in range(2_000):
        text = json.dumps(body | {"n": i}, separators=(",", ":"))
        parsed = json.loads(text)
        headers = {f"x-header-{k}": str(k * i) for k in range(8)}
        line = " ".join(f"{k}={v}" for k, v in sorted(headers.items())) + parsed["model"]
        hashlib.sha256(line.encode()).hexdigest()


def calibrate(core: int | None, repeats: int = 7) -> float:
    """Milliseconds the reference workload takes on `core` (this process moved there for
    the measurement, then back): the median of `repeats` runs after one warm-up. Lower is
    a faster core; figures from two machines compare after dividing by it."""
    before = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        _reference_work()
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            _reference_work()
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)
    finally:
        os.sched_setaffinity(0, before)

"""--py-spy: profile the TalkTuah worker under wrk at 16 connections and summarize where
its time goes (own time by package and by function, inclusive time by function)."""

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from plan import Target
from processes import Service
from wrk import run_wrk


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
    load = run_wrk(wrk_binary, target, 16, seconds + 1, logs)
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

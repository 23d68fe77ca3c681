"""wrk, the non-streaming load: install it when missing, run it against a target at N
keep-alive connections, and read its summary (rate, p50/p99 latency, errors) from the
JSON line its Lua script prints."""

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cpu import cpu_snapshot, foreign_share
from plan import Target, chat_body
from processes import BenchError

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
    foreign: float  # the share of the machine's CPU others took meanwhile (processes, steal)

    @property
    def valid(self) -> bool:
        return not self.problems


def ensure_wrk() -> str:
    """The wrk binary's path; installs Debian's package when run as root with apt-get."""
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


def wrk_version(binary: str) -> str:
    """'wrk 4.1.0 [epoll]', without the copyright that follows."""
    printed = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
    return (printed.strip().splitlines() or ["wrk"])[0].split(" Copyright")[0]


def run_wrk(binary: str, target: Target, connections: int, seconds: int, logs: Path) -> Load:
    """One wrk run of `seconds` at `connections` (its output appended to wrk.log)."""
    script = logs / f"wrk-{re.sub(r'[^a-z0-9]+', '-', target.name.lower())}.lua"
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

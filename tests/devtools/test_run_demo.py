"""`make run`'s demo as a user runs it: `manage.py run_demo` (after `migrate` and
`demo_setup`) in a var folder of its own, on free ports. It serves a streamed chat with
the demo key through the production entry point (the guarded protocol), and SIGTERM
stops every process it started, the simulator the worker runs included: sent to its pid,
or to its process group once or twice (as `make run` stopped by its group gets it), with
no traceback, no process left and every port free again."""

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
import pytest

from tests.net import free_port, port_is_free
from tests.sse import sse_json
from tests.waiting import wait_for

BASE_DIR = Path(__file__).resolve().parents[2]


def manage(*args: str) -> list[str]:
    return [sys.executable, str(BASE_DIR / "manage.py"), *args]


def set_up_demo(var_dir: Path) -> tuple[dict[str, str], str]:
    """The environment of a demo whose files are in var_dir, migrated and set up by
    demo_setup, and the demo key it made."""
    # The demo's own SQLite database and files, whatever the suite runs on.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["TALKTUAH_VAR_DIR"] = str(var_dir)
    for step in (manage("migrate", "--no-input", "-v", "0"), manage("demo_setup")):
        subprocess.run(step, env=env, cwd=BASE_DIR, check=True, timeout=300)
    return env, (var_dir / "demo-key.txt").read_text().strip()


def start_demo(
    env: dict[str, str], log: IO[bytes], *, port: int, sim_port: int, hub_port: int, **popen: Any
) -> "subprocess.Popen[bytes]":
    """`manage.py run_demo` on those ports, its output in log."""
    return subprocess.Popen(
        manage(
            "run_demo",
            *("--port", str(port), "--sim-port", str(sim_port), "--hub-port", str(hub_port)),
        ),
        env=env,
        cwd=BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        **popen,
    )


def streamed_chat(url: str, key: str) -> str | None:
    """The text of a streamed chat, or None while the demo is still starting."""
    try:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"messages": [{"role": "user", "content": "Hello!"}], "stream": True},
            timeout=10,
        )
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    assert response.content.endswith(b"data: [DONE]\n\n"), response.content[-200:]
    return "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in sse_json(response.content)
        if chunk.get("choices")
    )


def oversized_head(port: int) -> bytes:
    """The answer to a request whose headers are over MAX_REQUEST_HEAD_BYTES (64 KiB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        return sock.recv(65536)


def test_the_demo_chats_through_the_guarded_gateway_and_sigterm_stops_it_all(
    tmp_path: Path,
) -> None:
    env, key = set_up_demo(tmp_path)
    port, sim_port, hub_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "demo.log").open("wb")
    demo = start_demo(env, log, port=port, sim_port=sim_port, hub_port=hub_port)
    try:
        text = wait_for(
            lambda: streamed_chat(url, key), timeout=180, interval=0.5, message="a demo chat"
        )
        assert text.strip(), "the simulated model streamed no text"
        # The guarded protocol answers (uvicorn's own would pass the head to the app).
        assert oversized_head(port).startswith(b"HTTP/1.1 431 "), "not the guarded protocol"
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            pytest.fail("run_demo did not stop within 60 s of SIGTERM")
        finally:
            log.close()
    output = (tmp_path / "demo.log").read_text(errors="replace")
    assert demo.returncode == 0, output
    assert "Stopping" in output
    for name, each in (("gateway", port), ("simulator", sim_port), ("fake Hub", hub_port)):
        wait_for(functools.partial(port_is_free, each), timeout=15, message=f"the {name} to stop")


def demo_processes(demo: "subprocess.Popen[bytes]") -> list[psutil.Process]:
    """run_demo and everything under it: the fake Hub, the worker, the gateway and its
    uvicorn process, and the simulator the worker started."""
    root = psutil.Process(demo.pid)
    return [root, *root.children(recursive=True)]


def gone(process: psutil.Process) -> bool:
    # is_running() compares the create time too: a reused pid is not the process.
    return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
def test_sigterm_to_its_process_group_stops_everything_once_and_frees_the_ports(
    tmp_path: Path, times: int
) -> None:
    # As CI, systemd or `kill -- -PGID` stop `make run`: the whole process group gets
    # SIGTERM; make also passes one on to run_demo, which then gets it twice.
    env, key = set_up_demo(tmp_path)
    ports = {"gateway": free_port(), "simulator": free_port(), "fake Hub": free_port()}
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = start_demo(
            env,
            log,
            port=ports["gateway"],
            sim_port=ports["simulator"],
            hub_port=ports["fake Hub"],
            start_new_session=True,  # its own process group, as make's
        )
    try:
        url = f"http://127.0.0.1:{ports['gateway']}"
        wait_for(lambda: streamed_chat(url, key), timeout=180, interval=0.5, message="a chat")
        started = demo_processes(demo)
        assert len(started) >= 5, [p.cmdline() for p in started]
        for _ in range(times):
            os.killpg(demo.pid, signal.SIGTERM)
            time.sleep(0.05)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    output = log_path.read_text(errors="replace")
    assert demo.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.count("Stopping (SIGTERM)") == 1, output
    wait_for(lambda: all(gone(p) for p in started), timeout=10, message="every process to end")
    for name, port in ports.items():
        assert port_is_free(port), f"the {name}'s port {port} is still taken"

"""LiteLLM's proxy, measured side by side with TalkTuah: find it (or install it into its own
venv with --with-litellm), configure it in front of the same upstream, start it. Every way
it can be missing ends in one "LiteLLM skipped: ..." line and a run without it."""

import shutil
import subprocess
import sys
from pathlib import Path

from plan import BENCH, MODEL, ROOT
from processes import BenchError, Service, free_port, start_service

LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]==1.80.0"
LITELLM_INSTALL = (
    f"make bench BENCH_ARGS=--with-litellm, or: python3 -m venv {LITELLM_VENV.relative_to(ROOT)}"
    f" && {LITELLM_VENV.relative_to(ROOT)}/bin/pip install '{LITELLM_REQUIREMENT}'"
)
LITELLM_KEY = "sk-bench"  # the proxy's master key, sent on every request


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


def start_litellm(
    binary: Path, upstream: Service, core: int | None, logs: Path, env: dict[str, str]
) -> Service | None:
    """LiteLLM's proxy, one worker, serving MODEL from `upstream`; None when it did not
    start (a run without LiteLLM is still a run)."""
    config = logs / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream.base}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    try:
        return start_service(
            "LiteLLM",
            [str(binary), "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", "1"],
            port=port, health="/health/liveliness", core=core, logs=logs,
            env=env | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, cwd=logs,
            timeout=180,
        )  # fmt: skip
    except BenchError as exc:
        print(f"LiteLLM skipped: its proxy did not start: {exc}")
        return None

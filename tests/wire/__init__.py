"""Real captures of what vLLM 0.32 sends (copied from the project's shared
vllm-0.32-wire folder, see its README.md), kept in the repo so the tests that compare
the simulator and the gateway with real vLLM run on any fresh clone."""

from pathlib import Path

WIRE = Path(__file__).resolve().parent / "vllm-0.32"

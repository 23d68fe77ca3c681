"""Health, metrics, the overhead header, usage and the access log, over real sockets."""

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelmgr.models import ModelSwitch, SwitchPhase
from talktuah_site import monitoring
from tests.gateway_process import REPO, GatewayProcess
from tests.net import free_port

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "a secret prompt"}]}


@pytest.fixture(autouse=True)
def _fresh_health():
    monitoring.forget_health()
    yield
    monitoring.forget_health()


def healthz(gateway):
    monitoring.forget_health()
    return httpx.get(f"{gateway.url}/api/healthz", timeout=10)


def test_healthz_is_ok_with_the_model_and_its_queue(gateway, simulator):
    simulator(model="demo-model", max_model_len=1024)
    response = healthz(gateway)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["upstream"]["reachable"] is True
    assert body["upstream"]["latency_ms"] >= 0
    assert body["model"] == {"id": "demo-model", "max_model_len": 1024}
    assert body["queue"] == {"waiting": 0, "running": 0, "kv_cache_usage": 0}
    assert body["gpu"] == "unknown"
    assert body["switch"] is None


def test_healthz_is_down_and_503_without_vllm(gateway, settings):
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{free_port()}"
    response = healthz(gateway)
    assert response.status_code == 503
    assert response.json()["status"] == "down"
    assert response.json()["upstream"]["reachable"] is False


def test_healthz_says_loading_during_a_switch(gateway, simulator):
    simulator(wait=False, model="org/new", startup_delay=5)
    ModelSwitch.objects.create(from_model="org/old", to_model="org/new", phase=SwitchPhase.LOADING)
    response = healthz(gateway)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "loading"
    assert body["switch"]["to_model"] == "org/new"


def test_healthz_queue_matches_vllm_metrics(gateway, simulator, make_key):
    sim = simulator(tokens=300, token_delay=0.01)
    key = make_key()
    done = threading.Event()

    def long_stream():
        with httpx.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json={**CHAT, "stream": True, "max_tokens": 300, "ignore_eos": True},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            for _ in response.iter_bytes():
                if done.is_set():
                    break

    client = threading.Thread(target=long_stream)
    client.start()
    try:
        deadline = time.monotonic() + 5
        while sim.metrics()["vllm:num_requests_running"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        queue = healthz(gateway).json()["queue"]
        assert queue["running"] == sim.metrics()["vllm:num_requests_running"] == 1
        assert queue["waiting"] == sim.metrics()["vllm:num_requests_waiting"]
    finally:
        done.set()
        client.join(10)


def test_a_burst_of_health_probes_costs_vllm_a_few_requests(gateway, simulator):
    sim = simulator()
    healthz(gateway)
    before = sim.metrics()["simulator_http_requests_total"]
    with httpx.Client(timeout=10) as client:
        statuses = [client.get(f"{gateway.url}/api/healthz").status_code for _ in range(50)]
    after = sim.metrics()["simulator_http_requests_total"]
    assert statuses == [200] * 50
    # One look at vLLM is three requests (/health, /v1/models, /metrics), the scrape one.
    assert after - before - 1 <= 9


def test_livez_and_readyz(gateway):
    assert httpx.get(f"{gateway.url}/livez").json() == {"status": "alive"}
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200


def families(text):
    names = [family.name for family in text_string_to_metric_families(text)]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"families exposed twice: {duplicates}"
    return set(names)


def test_metrics_has_the_gateways_and_vllms_families(gateway, simulator, make_key):
    simulator()
    key = make_key(name="metrics-key")
    httpx.post(
        f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    response = httpx.get(f"{gateway.url}/metrics")
    assert response.status_code == 200
    names = families(response.text)
    for family in (
        "talktuah_requests",
        "talktuah_upstream_latency_seconds",
        "talktuah_time_to_first_token_seconds",
        "talktuah_overhead_seconds",
        "talktuah_prompt_tokens",
        "talktuah_completion_tokens",
        "talktuah_active_streams",
        "talktuah_upstream_retries",
        "talktuah_rate_limited",
        "talktuah_upstream_up",
        "talktuah_download_bytes",
        "talktuah_switch_duration_seconds",
        "django_http_requests_before_middlewares",
        "vllm:num_requests_running",
        "vllm:generation_tokens",
    ):
        assert family in names, family
    assert 'talktuah_requests_total{endpoint="chat_completions",key="metrics-key",' in response.text
    assert key not in response.text
    assert "process_cpu_seconds_total" in response.text  # the gateway's own, once


def test_metrics_answers_without_vllm(gateway, settings):
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{free_port()}"
    response = httpx.get(f"{gateway.url}/metrics")
    assert response.status_code == 200
    names = families(response.text)
    assert "talktuah_requests" in names
    assert not any(name.startswith("vllm:") for name in names)
    assert "talktuah_upstream_up 0.0" in response.text


def test_metrics_can_need_a_token(gateway, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    ok = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200


def test_metrics_are_closed_without_a_token_unless_made_public(gateway, settings):
    # What DEBUG=false gives by default: the labels name keys, so nobody may read them.
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False
    closed = httpx.get(f"{gateway.url}/metrics")
    assert closed.status_code == 403
    assert closed.json()["error"]["code"] == "metrics_closed"
    assert "talktuah_" not in closed.text
    settings.METRICS_PUBLIC = True
    assert httpx.get(f"{gateway.url}/metrics").status_code == 200


def test_metrics_are_public_by_default_only_in_debug():
    for debug, public in (("true", "True"), ("false", "False")):
        env = {
            **os.environ,
            "DEBUG": debug,
            "SECRET_KEY": "k" + secrets.token_urlsafe(60),
            "METRICS_PUBLIC": "",
        }
        show = "from talktuah_site import settings; print(settings.METRICS_PUBLIC)"
        shown = subprocess.run(
            [sys.executable, "-c", show],
            env=env, cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert shown.stdout.strip() == public


def test_unknown_models_do_not_become_label_values(gateway, simulator, make_key):
    simulator(model="demo-model")
    key = make_key(name="labels")
    httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**CHAT, "model": "attacker-chosen-string"},
        headers={"Authorization": f"Bearer {key}"},
    )
    text = httpx.get(f"{gateway.url}/metrics").text
    assert "attacker-chosen-string" not in text
    assert 'key="labels",model="other",status="404"' in text


@pytest.mark.parametrize("stream", [False, True])
def test_proxied_responses_carry_the_overhead_and_log_no_secrets(
    gateway, simulator, make_key, caplog, stream
):
    simulator()
    key = make_key(name="logged")
    with caplog.at_level(logging.INFO, logger="talktuah.access"):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={**CHAT, "stream": stream},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
        overhead = float(response.headers["x-talktuah-overhead-ms"])
        assert 0 <= overhead < 1000
        deadline = time.monotonic() + 5
        while not [r for r in caplog.records if r.name == "talktuah.access"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "talktuah.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["key"] == key.split(".")[0]
    assert entry["status"] == 200 and entry["stream"] is stream
    assert entry["completion_tokens"] > 0 and entry["attempts"] == 1
    assert entry["duration_ms"] is not None
    if stream:
        assert entry["ttft_ms"] is not None
    all_logs = caplog.text
    assert key not in all_logs
    assert key.split(".")[1] not in all_logs
    assert "a secret prompt" not in all_logs
    assert "Hello" not in all_logs  # the simulator's completion text


def test_a_key_sees_its_own_usage(gateway, simulator, make_key):
    simulator(tokens=5)
    key, other = make_key(name="mine"), make_key(name="theirs")
    for k in (key, key, other):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {k}"},
        )
    deadline = time.monotonic() + 5
    while True:
        body = httpx.get(f"{gateway.url}/api/usage", headers={"Authorization": f"Bearer {key}"})
        if body.json()["totals"]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    data = body.json()
    assert data["totals"]["requests"] == 2
    assert data["totals"]["completion_tokens"] == 10
    assert [row["model"] for row in data["usage"]] == ["demo-model"]
    bad = httpx.get(f"{gateway.url}/api/usage?days=0", headers={"Authorization": f"Bearer {key}"})
    assert bad.status_code == 400


def test_one_scrape_counts_the_requests_of_every_worker(simulator, make_key, tmp_path):
    sim = simulator()
    key = make_key(name="multi", rpm_limit=10_000)
    env = {
        "VLLM_BASE_URL": sim.url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "TALKTUAH_VAR_DIR": str(tmp_path / "var"),
    }
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "stale_counter_1.db").write_bytes(b"left over")  # must be emptied
    with GatewayProcess(workers=2, env=env) as server:
        url = server.url
        for _ in range(20):
            with httpx.Client(timeout=10) as client:  # new connections: both workers serve
                response = client.post(
                    f"{url}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert response.status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "talktuah_requests"
        for sample in family.samples
        if sample.name == "talktuah_requests_total" and sample.labels["key"] == "multi"
    )
    assert counted == 20

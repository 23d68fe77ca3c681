"""Keys on the request path: bearer and x-api-key, 401 for missing, unknown, revoked
and expired keys, 403 for a missing scope or a model the key may not use."""

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from modelmgr import auth
from modelmgr.models import ApiKey, Scope
from plumbing.db import run_sync

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}


def chat(gateway, headers, body=None):
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body or CHAT, headers=headers, timeout=10
    )


def assert_openai_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


def test_it_accepts_a_bearer_key_and_an_x_api_key(gateway, simulator, make_key):
    simulator()
    key = make_key()
    assert chat(gateway, {"Authorization": f"Bearer {key}"}).status_code == 200
    assert chat(gateway, {"x-api-key": key}).status_code == 200


def test_it_rejects_a_missing_key(gateway, simulator):
    simulator()
    assert_openai_error(chat(gateway, {}), 401, "missing_api_key")


def test_it_rejects_an_unknown_key(gateway, simulator, make_key):
    simulator()
    key = make_key()
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert_openai_error(
        chat(gateway, {"Authorization": f"Bearer {forged}"}), 401, "invalid_api_key"
    )
    assert_openai_error(chat(gateway, {"Authorization": "Bearer nonsense"}), 401, "invalid_api_key")


def test_it_rejects_a_revoked_key_within_seconds(gateway, simulator, make_key, settings):
    settings.API_KEY_CACHE_SECONDS = 0.5
    simulator()
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert chat(gateway, headers).status_code == 200
    ApiKey.objects.filter(prefix=key.split(".")[0]).update(is_active=False)
    import time

    time.sleep(0.6)
    assert_openai_error(chat(gateway, headers), 401, "key_revoked")


def test_it_rejects_an_expired_key(gateway, simulator, make_key):
    simulator()
    key = make_key(expires_at=timezone.now() - timedelta(seconds=1))
    assert_openai_error(chat(gateway, {"Authorization": f"Bearer {key}"}), 401, "key_expired")


def test_it_refuses_a_model_the_key_may_not_use(gateway, simulator, make_key):
    simulator(model="demo-model")
    key = make_key(allowed_models=["other-model"])
    response = chat(gateway, {"Authorization": f"Bearer {key}"})
    assert_openai_error(response, 403, "model_not_allowed")
    assert response.json()["error"]["param"] == "model"


def test_it_lists_only_the_models_a_key_may_use(gateway, simulator, make_key):
    simulator(model="demo-model")
    allowed = make_key(allowed_models=["demo-model"])
    other = make_key(allowed_models=["other-model"])
    for path in ("/v1/models", "/api/models"):
        ids = [
            m["id"]
            for m in httpx.get(
                f"{gateway.url}{path}", headers={"Authorization": f"Bearer {allowed}"}
            ).json()["data"]
        ]
        assert ids == ["demo-model"]
        listed = httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {other}"})
        assert listed.json()["data"] == []


def test_it_refuses_a_key_without_the_inference_scope(gateway, simulator, make_key):
    simulator()
    key = make_key(scopes=(Scope.ADMIN,))
    assert_openai_error(
        chat(gateway, {"Authorization": f"Bearer {key}"}), 403, "insufficient_scope"
    )


def test_it_accepts_the_original_apis_proxy_api_key(gateway, simulator, settings):
    simulator()
    settings.PROXY_API_KEY = "original-secret-value"
    assert chat(gateway, {"Authorization": "Bearer original-secret-value"}).status_code == 200
    assert chat(gateway, {"Authorization": "Bearer original-secret-valuf"}).status_code == 401


def test_it_does_not_hit_the_database_for_every_request(gateway, simulator, make_key):
    simulator()
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert chat(gateway, headers).status_code == 200
    prefix = key.split(".")[0]
    # Delete the row behind the cache's back: the cached lookup still answers.
    ApiKey.objects.filter(prefix=prefix).delete()
    assert chat(gateway, headers).status_code == 200
    auth.forget_cached_keys()
    assert chat(gateway, headers).status_code == 401


def test_it_records_last_use_at_most_once_per_interval(gateway, simulator, make_key):
    simulator()
    key = make_key()
    prefix = key.split(".")[0]
    headers = {"Authorization": f"Bearer {key}"}
    assert chat(gateway, headers).status_code == 200
    import time

    deadline = time.monotonic() + 5
    while ApiKey.objects.get(prefix=prefix).last_used_at is None:
        assert time.monotonic() < deadline, "last_used_at was never written"
        time.sleep(0.05)
    first = ApiKey.objects.get(prefix=prefix).last_used_at
    assert chat(gateway, headers).status_code == 200
    time.sleep(0.3)
    assert ApiKey.objects.get(prefix=prefix).last_used_at == first


def test_cors_follows_the_settings(gateway, simulator, make_key, settings):
    simulator()
    settings.CORS_ALLOWED_ORIGINS = ["https://chat.example.com"]
    preflight = {
        "Origin": "https://chat.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = httpx.options(f"{gateway.url}/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    other = httpx.options(
        f"{gateway.url}/v1/chat/completions", headers={**preflight, "Origin": "https://evil.test"}
    )
    assert "access-control-allow-origin" not in other.headers
    key = make_key()
    response = chat(
        gateway, {"Authorization": f"Bearer {key}", "Origin": "https://chat.example.com"}
    )
    assert response.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert response.headers["x-content-type-options"] == "nosniff"


class CountingLookups:
    """A spy on the key lookups the auth module sends to the database (plumbing's
    run_sync), each slowed down by `delay`, as a busy database would be."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lookups = 0

    async def __call__(self, fn, /, *args, **kwargs):
        if getattr(fn, "__name__", "") == "first":
            self.lookups += 1
            await asyncio.sleep(self.delay)
        return await run_sync(fn, *args, **kwargs)


def test_requests_arriving_together_share_one_key_lookup(gateway, simulator, make_key, monkeypatch):
    simulator()
    key = make_key()
    spy = CountingLookups(delay=0.5)
    monkeypatch.setattr(auth, "run_sync", spy)
    headers = {"Authorization": f"Bearer {key}"}

    async def together() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=CHAT, headers=headers)
                    for _ in range(16)
                )
            )
        return [answer.status_code for answer in answers]

    assert asyncio.run(together()) == [200] * 16
    assert spy.lookups == 1


def test_a_key_in_use_is_read_again_before_its_entry_expires(
    gateway, simulator, make_key, monkeypatch, settings
):
    simulator()
    settings.API_KEY_CACHE_SECONDS = 5.0
    key = make_key()
    spy = CountingLookups()
    monkeypatch.setattr(auth, "run_sync", spy)
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    assert chat(gateway, headers).status_code == 200
    assert spy.lookups == 1
    # In the entry's last fifth: the request is answered from it at once, and the key is
    # read again meanwhile, so a revocation shows before the entry would have expired.
    time.sleep(max(0.0, started + 4.2 - time.monotonic()))
    ApiKey.objects.filter(prefix=key.split(".")[0]).delete()
    assert chat(gateway, headers).status_code == 200
    deadline = time.monotonic() + 0.5
    while spy.lookups < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spy.lookups == 2
    assert chat(gateway, headers).status_code == 401
    assert time.monotonic() - started < 5.0, "too slow to tell a refresh from an expiry"


def auth_failures(gateway) -> dict[str, float]:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("talktuah_auth_failures_total{"):
            labels, _, value = line.rpartition(" ")
            counts[labels.split('reason="')[1].split('"')[0]] = float(value)
    return counts


def test_it_counts_refused_keys_by_reason_never_by_key(gateway, simulator, make_key):
    simulator()
    key = make_key(name="counted")
    revoked = make_key(name="revoked")
    ApiKey.objects.filter(prefix=revoked.split(".")[0]).update(is_active=False)
    admin_only = make_key(name="ops", scopes=(Scope.ADMIN,))
    before = auth_failures(gateway)
    for attempt in range(3):
        # The right prefix, a wrong secret (not the key with its last character swapped
        # for a digit: 3 times in 64 that digit was the key's own, and the key worked).
        wrong = f"{key.split('.')[0]}.{'x' * 31}{attempt}"
        chat(gateway, {"Authorization": f"Bearer {wrong}"})
    chat(gateway, {"Authorization": f"Bearer {revoked}"})
    chat(gateway, {"x-api-key": admin_only})
    after = auth_failures(gateway)
    grown = {reason: after[reason] - before.get(reason, 0) for reason in after}
    assert grown["invalid_api_key"] == 3
    assert grown["key_revoked"] == 1
    assert grown["insufficient_scope"] == 1
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert key.split(".")[0] not in text and revoked.split(".")[0] not in text


def test_random_prefixes_do_not_grow_the_key_cache_without_bound(gateway, simulator, monkeypatch):
    simulator()
    monkeypatch.setattr(auth, "CACHE_MAX_ENTRIES", 20)
    for n in range(60):
        chat(gateway, {"Authorization": f"Bearer tt-{n:08x}.guess"})
    assert len(auth._cache) <= 20

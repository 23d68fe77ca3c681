"""Security headers on every kind of route, on both handlers (the lean proxy path and
Django's full stack), over a real socket."""

import httpx
import pytest

from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

ROUTES = [
    ("GET", "/"),
    ("GET", "/livez"),
    ("GET", "/api/healthz"),
    ("GET", "/metrics"),
    ("GET", "/admin/login/"),
    ("GET", "/api/model-status"),  # 401: management API
    ("GET", "/api/docs"),
    ("GET", "/nowhere"),  # 404 on the full stack
    ("GET", "/v1/models"),  # 401 on the lean path
    ("POST", "/v1/chat/completions"),
    ("POST", "/api/chat"),
    ("GET", "/v1/nowhere"),  # 404 on the lean path
]


def headers_of(gateway, method, path, **kw):
    return httpx.request(method, f"{gateway.url}{path}", timeout=10, **kw).headers


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_carries_the_security_headers(gateway, simulator, method, path):
    simulator()
    headers = headers_of(gateway, method, path)
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in headers  # not configured, and plain HTTP


def test_the_admin_may_not_be_framed_by_any_page(gateway):
    assert (
        "frame-ancestors 'none'"
        in headers_of(gateway, "GET", "/admin/login/")["content-security-policy"]
    )


def test_hsts_when_configured_and_the_request_came_over_https(tmp_path):
    env = {
        "TALKTUAH_VAR_DIR": str(tmp_path),
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    }
    with GatewayProcess(env=env) as server:
        for path in ("/livez", "/v1/models", "/admin/login/"):
            # uvicorn takes the scheme from X-Forwarded-Proto of a trusted proxy (127.0.0.1).
            https = headers_of(server, "GET", path, headers={"X-Forwarded-Proto": "https"})
            assert https["strict-transport-security"] == "max-age=31536000; includeSubDomains"
            assert "strict-transport-security" not in headers_of(server, "GET", path)

"""Every route of the OpenAPI schema, fuzzed with schemathesis against the gateway on a
real socket: data that fits the schema and data that does not, sent with an inference
key, an admin-scope key, no key, and the keys schemathesis makes up from the security
schemes. No answer may be a 5xx, every error must come in OpenAI's shape, no answer may
take 5 s, and nothing may fail behind the answers (no error logged).

The schema is the one the gateway serves (/api/openapi.json), plus GET /metrics, which
it leaves out of its public docs but serves on the same socket. The management routes
run for real but harmlessly: downloads only queue (no worker runs here) into a per-test
Hugging Face cache served by the fake Hub, and switches go to the process engine with
its state in the test's own folder.

Schemathesis drives hypothesis from its Python API rather than its pytest plugin: one
test loops over the operations and identities, so the figures come out as one report.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from backends.spec import default_spec
from modelmgr import services
from modelmgr.models import Scope
from tests.faults.conftest import report
from tests.process_engine import use_process_engine

pytestmark = pytest.mark.django_db(transaction=True)

# Examples per operation, identity and generation mode (18 operations x 4 identities x 2
# modes, less the operations with nothing to send wrong): 30 sends about 3,100 requests
# in 75 s, 50 about 5,200 in two minutes on a shared 2-core machine.
MAX_EXAMPLES = 50
SLOW_SECONDS = 5.0
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}

# /metrics is not in the public docs (include_in_schema=False) but serves the same socket.
METRICS_OPERATION = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus exposition",
        "responses": {"200": {"description": "text/plain exposition"}},
    }
}


@dataclass
class Findings:
    requests: int = 0
    operations: set[str] = field(default_factory=set)
    server_errors: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    slowest: float = 0.0
    slowest_call: str = ""


def is_openai_error(content: bytes) -> bool:
    try:
        body = httpx.Response(200, content=content).json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and set(error) >= OPENAI_ERROR_KEYS
        and isinstance(error["message"], str)
        and isinstance(error["type"], str)
    )


AUTH_HEADERS = {"authorization", "x-api-key"}


def has_inputs(operation: Any) -> bool:
    """Whether there is anything to send wrong (else negative generation is unsatisfiable)."""
    return bool(operation.query or operation.body or operation.headers)


def fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str] | None,
    found: Findings,
) -> None:
    """Send MAX_EXAMPLES cases; `headers` replace the key schemathesis generated (from the
    security schemes), None keeps whatever it generated."""
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the repository
        phases=[Phase.explicit, Phase.generate],  # findings are collected, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: schemathesis.Case) -> None:
        if headers is not None and case.headers:
            for name in [name for name in case.headers if name.lower() in AUTH_HEADERS]:
                del case.headers[name]
        started = time.perf_counter()
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        found.requests += 1
        what = (
            f"{case.method} {case.formatted_path} query={case.query!r} "
            f"headers={response.request.headers!r} "
            f"body={getattr(case, 'body', None)!r:.200} -> {response.status_code} "
            f"{response.content[:300]!r}"
        )
        if elapsed > found.slowest:
            found.slowest, found.slowest_call = elapsed, what
        if elapsed > SLOW_SECONDS:
            found.slow.append(f"{elapsed:.1f}s {what}")
        if response.status_code >= 500:
            found.server_errors.append(what)
        # Anthropic's Messages API answers in Anthropic's shape (its SDKs read no other).
        shaped = (
            is_anthropic_error(response.content)
            if case.formatted_path.startswith("/v1/messages")
            else is_openai_error(response.content)
        )
        if response.status_code >= 400 and not shaped:
            found.misshapen.append(what)

    try:
        send()
    finally:
        session.close()


def is_anthropic_error(content: bytes) -> bool:
    try:
        body = json.loads(content)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (
        body.get("type") == "error"
        and isinstance(error, dict)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
    )


@pytest.mark.timeout(900)
def test_fuzzing_every_route_finds_no_5xx_no_misshapen_error_and_nothing_slow(
    gateway, simulator, make_key, fake_hub, settings, tmp_path, caplog
):
    use_process_engine(settings, tmp_path, startup_delay=0)
    settings.SWITCH_WAIT_SECONDS = 2.0  # a queued switch never finishes here (no worker)
    simulator(token_delay=0.001)
    # A downloaded model, so model-status and the switch route have something to show.
    fake_hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    backend = default_spec()
    services.download_start(repo_id="org/tiny", backend=backend)
    claimed = services.download_claim(worker="fuzz", backend=backend)
    assert claimed is not None
    services.download_run(job=claimed, backend=backend)
    identities = {
        "inference key": {"Authorization": f"Bearer {make_key(rpm_limit=10**6)}"},
        "admin key": {"x-api-key": make_key(name="ops", scopes=(Scope.ADMIN,))},
        "no key": {},
        "generated keys": None,  # schemathesis's own values for Authorization and x-api-key
    }
    served = httpx.get(f"{gateway.url}/api/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(
        served["paths"]
    )
    served["paths"]["/metrics"] = METRICS_OPERATION
    schema = schemathesis.openapi.from_dict(served)

    found = Findings()
    for result in schema.get_all_operations():
        operation = result.ok()
        found.operations.add(operation.label)
        for headers in identities.values():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                    continue
                fuzz(operation, mode, gateway.url, headers, found)

    # What failed behind a good answer: the usage writer once failed every batch after
    # one hostile model name. Django reports hostile input (a bad Host) on its security
    # loggers at ERROR by design (the log gets one warning a minute of them): that is
    # not a failure.
    logged = [
        f"{record.name}: {record.getMessage()[:300]}"
        for record in caplog.records
        if record.levelno >= logging.ERROR and not record.name.startswith("django.security")
    ]
    report(
        "OpenAPI fuzzing (schemathesis)",
        operations_fuzzed=len(found.operations),
        requests_sent=found.requests,
        **{"5xx": len(found.server_errors)},
        non_OpenAI_shaped_errors=len(found.misshapen),
        slowest_response=f"{found.slowest:.2f}s",
        errors_logged=len(logged),
    )
    assert len(found.operations) == sum(len(methods) for methods in served["paths"].values())
    assert found.server_errors == []
    assert found.misshapen == []
    assert found.slow == [], found.slowest_call
    assert logged == []

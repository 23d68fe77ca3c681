"""/api/openapi.json documents what clients need: both key schemes, and a real response
shape for every management answer (not an untyped object)."""

import pytest
from django.test import Client

MANAGEMENT = [
    ("post", "/api/download-model", "202"),
    ("get", "/api/download-progress", "200"),
    ("get", "/api/model-status", "200"),
    ("post", "/api/switch-model", "202"),
    ("get", "/api/model-loading-status", "200"),
    ("post", "/api/restart-api", "200"),
]


@pytest.fixture(scope="module")
def schema():
    response = Client().get("/api/openapi.json")
    assert response.status_code == 200
    return response.json()


def resolve(schema, node):
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_it_lists_both_key_schemes(schema):
    schemes = schema["components"]["securitySchemes"].values()
    assert {"type": "http", "scheme": "bearer"} in schemes
    assert {"type": "apiKey", "in": "header", "name": "x-api-key"} in schemes
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert len(chat["security"]) == 2


@pytest.mark.parametrize(("method", "path", "status"), MANAGEMENT)
def test_it_types_every_management_answer(schema, method, path, status):
    operation = schema["paths"][path][method]
    body = operation["responses"][status]["content"]["application/json"]["schema"]
    variants = [resolve(schema, v) for v in body.get("anyOf", [body])]
    for variant in variants:
        assert variant.get("type") == "object" and variant.get("properties"), variant
    assert operation["security"], f"{path} is not behind a key"


def test_it_documents_the_health_answer_for_ok_and_not_ok(schema):
    responses = schema["paths"]["/api/healthz"]["get"]["responses"]
    for status in ("200", "503"):
        shape = resolve(schema, responses[status]["content"]["application/json"]["schema"])
        assert {"status", "upstream", "model", "switch", "queue", "gpu"} <= set(shape["properties"])


@pytest.mark.parametrize(
    ("path", "field", "stream_default"),
    [
        ("/v1/chat/completions", "messages", False),
        ("/v1/completions", "prompt", False),
        ("/v1/embeddings", "input", False),
        ("/api/chat", "messages", True),
    ],
)
def test_it_documents_the_body_the_proxy_checks(schema, path, field, stream_default):
    body = schema["paths"][path]["post"]["requestBody"]
    shape = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert shape["required"] == [field]
    assert shape["additionalProperties"] is True  # unknown fields pass through to vLLM
    assert shape["properties"]["model"]["type"] == ["string", "null"]
    stream = shape["properties"]["stream"]
    assert (stream["type"], stream["default"]) == (["boolean", "null"], stream_default)
    assert shape["properties"]["stream_options"]["type"] == ["object", "null"]

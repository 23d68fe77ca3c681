"""The request-body checks (proxy/bodies.py) under random input: any bytes and any JSON
give back the body or a 4xx in OpenAI's shape, never another exception (a 500), and a
body that passes keeps every field as sent, integers beyond 64 bits included, also when
the gateway writes it again. Through the gateway to vLLM: tests/faults."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumbing.errors import TalkTuahError, error_body
from proxy.bodies import (
    API_CHAT,
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS,
    DETOKENIZE,
    EMBEDDINGS,
    MESSAGES,
    RERANK,
    RESPONSES,
    TOKENIZE,
    Endpoint,
    encode_body,
    parse_body,
)

ENDPOINTS = [
    CHAT,
    API_CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MESSAGES,
    COUNT_TOKENS,
    RESPONSES,
    TOKENIZE,
    DETOKENIZE,
    RERANK,
]
CHECKED = ("messages", "prompt", "input", "tokens", "query", "model", "stream", "stream_options")

json_values = st.recursive(
    st.none()
    | st.booleans()
    # Beyond 64 bits too: orjson alone would read 2**64 + 1 as a float.
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(2**200), 2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# The fields the checks look at, with values of every type, among random ones.
checked_fields = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(CHECKED, json_values),
)
json_objects = st.builds(
    lambda a, b: {**a, **b}, checked_fields, st.dictionaries(st.text(), json_values, max_size=3)
)


def json_bytes(value: Any) -> bytes:
    """JSON as a client sends it (the stdlib's: every integer exact)."""
    return json.dumps(value).encode()


def parse(content: bytes, endpoint: Endpoint, content_type: str = "application/json"):
    return parse_body(content_type=content_type, raw=lambda: content, endpoint=endpoint)


def refusal_of(exc: TalkTuahError) -> dict:
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    assert 400 <= exc.status < 500
    assert isinstance(exc.message, str) and exc.message
    return body["error"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=64) | json_values.map(json_bytes) | json_objects.map(json_bytes))
def test_any_body_is_taken_or_refused_with_a_4xx(endpoint, content):
    try:
        body = parse(content, endpoint)
    except TalkTuahError as exc:
        error = refusal_of(exc)
        fields = (endpoint.required, endpoint.alternative, "model", "stream", "stream_options")
        assert error["param"] in (None, *fields)
    else:
        assert body == json.loads(content)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@settings(max_examples=25, deadline=None)
@given(content_type=st.text(max_size=20).filter(lambda t: t != "application/json"))
def test_any_other_content_type_is_refused_with_415_before_the_body_is_read(endpoint, content_type):
    def unread() -> bytes:
        raise AssertionError("the body was read")

    with pytest.raises(TalkTuahError) as refused:
        parse_body(content_type=content_type, raw=unread, endpoint=endpoint)
    assert refused.value.status == 415


def valid_bodies(endpoint: Endpoint) -> st.SearchStrategy[dict]:
    required = (
        st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3), min_size=1)
        if endpoint.required == "messages"
        else st.text(min_size=1) | st.lists(json_values, min_size=1)
    )
    return st.builds(
        lambda value, known, extra: {**extra, endpoint.required: value, **known},
        required,
        st.fixed_dictionaries(
            {},
            optional={  # null is the default for each (OpenAI: "or null")
                "model": st.none() | st.text(),
                "stream": st.none() | st.booleans(),
                "stream_options": st.none()
                | st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            },
        ),
        st.dictionaries(
            st.text(max_size=12).filter(lambda k: k not in CHECKED), json_values, max_size=4
        ),
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_a_valid_body_passes_with_every_field_as_sent(endpoint, data):
    sent = data.draw(valid_bodies(endpoint))
    body = parse(json_bytes(sent), endpoint)
    assert body == sent
    # Written again (as when the gateway fills in the model), it still says the same.
    assert json.loads(encode_body(body)) == sent


def test_integers_beyond_64_bits_stay_exact_where_orjson_alone_makes_them_floats():
    sent = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64 + 1}
    sent["logit_bias"] = {"1": -(2**63) - 1}
    content = json_bytes(sent)
    assert orjson.loads(content)["seed"] == float(2**64 + 1)  # what it used to forward
    body = parse(content, CHAT)
    assert body["seed"] == 2**64 + 1 and isinstance(body["seed"], int)
    body["model"] = "other"
    assert json.loads(encode_body(body)) == sent | {"model": "other"}
    # An ordinary body stays on orjson's path, and is written the same way.
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 7}
    assert encode_body(parse(json_bytes(plain), CHAT)) == orjson.dumps(plain)

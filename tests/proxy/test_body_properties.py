"""The request-body checks (proxy/bodies.py) under random input: any bytes and any JSON
give back the body or a 4xx in OpenAI's shape, never another exception (a 500), and a
body that passes keeps every field as sent. Through the gateway to vLLM: tests/faults."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumbing.errors import TalkTuahError, error_body
from proxy.bodies import API_CHAT, CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, parse_body

ENDPOINTS = [CHAT, API_CHAT, COMPLETIONS, EMBEDDINGS]
CHECKED = ("messages", "prompt", "input", "model", "stream", "stream_options")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
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


def parse(content: bytes, endpoint: Endpoint, content_type: str = "application/json"):
    return parse_body(content_type=content_type, raw=lambda: content, endpoint=endpoint)


def refusal_of(exc: TalkTuahError) -> dict:
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    assert 400 <= exc.status < 500
    assert isinstance(exc.message, str) and exc.message
    return body["error"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@settings(max_examples=60, deadline=None)
@given(
    content=st.binary(max_size=64) | json_values.map(orjson.dumps) | json_objects.map(orjson.dumps)
)
def test_any_body_is_taken_or_refused_with_a_4xx(endpoint, content):
    try:
        body = parse(content, endpoint)
    except TalkTuahError as exc:
        error = refusal_of(exc)
        assert error["param"] in (None, endpoint.required, "model", "stream", "stream_options")
    else:
        assert body == orjson.loads(content)


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
    assert parse(orjson.dumps(sent), endpoint) == sent

"""The relay's core (proxy/sse.py) under every way the network can cut vLLM's stream:
what the client receives never depends on where the chunks end, no complete event is
ever held back, and the usage chunk is dropped exactly when the client did not ask for
it (its figures are read either way). The relay over a real socket: tests/faults."""

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import DONE, EventRelay

# Token texts with what could confuse a framing parser: quotes, braces, newlines,
# blank lines, "data:", the usage chunk's own markers, non-ASCII.
texts = st.text(
    alphabet=st.sampled_from(['"', "{", "}", "\n", "\r", ":", " ", "a", "é", "🙂", "\\"]),
    max_size=12,
) | st.sampled_from(['"choices":[]', '"usage":{}', "data: [DONE]\n\n", "\n\ndata: x"])


def chunk(index: int, text: str, usage: dict[str, int] | None) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if usage is not None:  # continuous_usage_stats: usage rides on a chunk with choices
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes | None, tuple[int, int] | None]:
    """vLLM's events, in order; the usage chunk among them (or None) and its figures."""
    continuous = draw(st.booleans())
    events = []
    for index, text in enumerate(draw(st.lists(texts, max_size=8))):
        usage = {"prompt_tokens": 3, "completion_tokens": index} if continuous else None
        events.append(chunk(index, text, usage))
        if draw(st.integers(0, 9)) == 0:
            events.append(b": keep-alive comment\n\n")
    usage_chunk, figures = None, None
    if draw(st.booleans()):
        figures = (draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))
        usage_chunk = (
            b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],'
            b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n'
            % (figures[0], sum(figures), figures[1])
        )
        events.append(usage_chunk)
    events.append(DONE)
    return events, usage_chunk, figures


@settings(max_examples=300, deadline=None)
@given(stream=streams(), strip_usage=st.booleans(), data=st.data())
def test_where_the_network_cuts_the_stream_never_changes_what_the_client_gets(
    stream, strip_usage, data
):
    events, usage_chunk, figures = stream
    whole = b"".join(events)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(whole) - 1), max_size=20))))
    bounds = [0, *cuts, len(whole)]
    sent = [event for event in events if not (strip_usage and event is usage_chunk)]
    ends = []  # where each event that goes to the client ends in the upstream bytes
    offset = 0
    for event in events:
        offset += len(event)
        if not (strip_usage and event is usage_chunk):
            ends.append(offset)

    relay = EventRelay(strip_usage=strip_usage)
    received = b""
    for start, end in itertools.pairwise(bounds):
        received += relay.feed(whole[start:end])
        # Every event complete in what arrived so far went out, and nothing more.
        assert received == b"".join(e for e, at in zip(sent, ends, strict=True) if at <= end)

    assert received == b"".join(sent)
    assert relay.pending == b""
    assert relay.finished
    assert relay.usage == figures


@settings(max_examples=200, deadline=None)
@given(stream=streams(), data=st.data())
def test_a_stream_cut_off_before_its_end_keeps_the_partial_event_pending(stream, data):
    events, _usage_chunk, _figures = stream
    whole = b"".join(events)
    stop = data.draw(st.integers(0, len(whole) - len(DONE)))  # [DONE] never arrives
    relay = EventRelay(strip_usage=False)
    received = relay.feed(whole[:stop])
    assert received + relay.pending == whole[:stop]
    assert received.endswith(b"\n\n") or received == b""
    assert not relay.finished

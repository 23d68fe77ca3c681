"""The queue gauges read from vLLM's /metrics (the poller does so every
BACKEND_POLL_SECONDS): the same figures as a full parse of the exposition, from the
three gauges' own lines only."""

from prometheus_client.parser import text_string_to_metric_families

from plumbing.vllm import QUEUE_GAUGES, queue_figures
from tests.wire import WIRE


def parsed_in_full(text: str) -> dict[str, float]:
    return {
        QUEUE_GAUGES[family.name]: sum(sample.value for sample in family.samples)
        for family in text_string_to_metric_families(text)
        if family.name in QUEUE_GAUGES
    }


def busy_exposition() -> str:
    """The capture with a busy engine: 3 running, 5 waiting (and 2 waiting by reason,
    a family whose name starts like the waiting gauge's), 42% of the KV cache."""
    text = (WIRE / "metrics.txt").read_text()
    by_reason = (
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"}'
    )
    replaced = {
        'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0': (
            'vllm:num_requests_running{engine="0",model_name="tiny"} 3.0'
        ),
        'vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0': (
            'vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0'
        ),
        f"{by_reason} 0.0": f"{by_reason} 2.0",
        'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0': (
            'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.42'
        ),
    }
    for old, new in replaced.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_the_gauges_of_real_vllms_exposition_are_what_a_full_parse_finds():
    for text in ((WIRE / "metrics.txt").read_text(), busy_exposition()):
        assert queue_figures(text) == parsed_in_full(text)
    assert queue_figures(busy_exposition()) == {
        "running": 3.0,
        "waiting": 5.0,
        "kv_cache_usage": 0.42,
    }


def test_two_engines_samples_are_summed_and_labels_may_hold_braces_and_spaces():
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="a} b"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="a} b"} 1.0 1700000000000\n'
        "vllm:num_requests_running 4\n"
    )
    assert queue_figures(text) == parsed_in_full(text) == {"waiting": 3.0, "running": 4.0}


def test_no_gauges_or_a_gauge_without_a_number_gives_none():
    assert queue_figures(None) is None
    assert queue_figures("") is None
    assert queue_figures("# HELP other\nother_total 3\n") is None
    assert queue_figures('vllm:num_requests_waiting{engine="0"} many\n') is None
    assert queue_figures('vllm:num_requests_running{engine="0"}\n') is None

"""A usage batch the database refuses (it answered, but will not store a value) does not
hold back every key's usage, retried forever: the rows it takes are written, each row it
refuses is logged with its counts and dropped."""

import asyncio
import logging

import pytest

from modelmgr.auth import Principal
from modelmgr.models import UsageDaily
from proxy import usage

pytestmark = pytest.mark.django_db(transaction=True)


def principal(prefix: str) -> Principal:
    return Principal(
        key_id=None,
        prefix=prefix,
        name=f"name-{prefix}",
        scopes=frozenset(),
        allowed_models=frozenset(),
        rpm_limit=None,
        tpm_limit=None,
    )


def test_a_refused_row_is_logged_and_dropped_and_the_others_are_written(settings, caplog):
    settings.USAGE_FLUSH_SECONDS = 3600  # the test flushes itself

    async def run() -> tuple[bool, bool]:
        usage.record(principal("tt-good1"), "m", prompt_tokens=3, completion_tokens=4)
        # More tokens than a PositiveBigIntegerField holds: every database refuses it.
        usage.record(principal("tt-huge"), "m", prompt_tokens=2**63, completion_tokens=1)
        usage.record(principal("tt-good2"), "m", prompt_tokens=5, completion_tokens=6)
        first = await usage.flush()
        second = await usage.flush()  # nothing left to retry
        assert usage._flusher is not None
        usage._flusher.cancel()
        return first, second

    with caplog.at_level(logging.ERROR, logger="proxy.usage"):
        assert asyncio.run(run()) == (True, True)
    rows = sorted(
        UsageDaily.objects.values_list(
            "key_prefix", "requests", "prompt_tokens", "completion_tokens"
        )
    )
    assert rows == [("tt-good1", 1, 3, 4), ("tt-good2", 1, 5, 6)]
    [refused] = [r for r in caplog.records if r.name == "proxy.usage"]
    message = refused.getMessage()
    assert "tt-huge" in message and f"prompt tokens {2**63}" in message
    assert "dropped" in message

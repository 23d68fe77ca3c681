"""Usage batches are written whole or not at all: proxy/usage.py keeps a batch that
failed and sends it again, so a half-written one would count its first rows twice."""

from datetime import date

import pytest
from django.db import OperationalError

from modelmgr.models import UsageDaily
from modelmgr.services import UsageDelta, usage_add
from tests.database_away import database_away

pytestmark = pytest.mark.django_db(transaction=True)


def delta(prefix: str, requests: int) -> UsageDelta:
    return UsageDelta(
        key_prefix=prefix,
        key_name=prefix,
        model="m",
        day=date(2026, 1, 1),
        requests=requests,
        errors=0,
        prompt_tokens=10 * requests,
        completion_tokens=20 * requests,
    )


def test_a_usage_batch_is_written_whole_or_not_at_all():
    # Before: the rows before the failing one stayed written, and the retried batch
    # counted them twice.
    usage_add(deltas=[delta("tt-a", 1), delta("tt-b", 1)])
    with database_away(after=1, matching="UPDATE"), pytest.raises(OperationalError):
        usage_add(deltas=[delta("tt-a", 5), delta("tt-b", 5)])
    assert sorted(UsageDaily.objects.values_list("key_prefix", "requests")) == [
        ("tt-a", 1),
        ("tt-b", 1),
    ]
    usage_add(deltas=[delta("tt-a", 5), delta("tt-b", 5)])  # the retry, once it is back
    assert sorted(UsageDaily.objects.values_list("key_prefix", "requests")) == [
        ("tt-a", 6),
        ("tt-b", 6),
    ]

"""Keys while the database is away: a key this process already looked up keeps
working from the cache, a key it never saw gets 503 with Retry-After."""

import pytest

from tests.database_away import database_away

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_keeps_serving_a_cached_key_while_the_database_is_away(
    client, simulator, make_key, settings
):
    # Before: the first lookup after the cache expired raised OperationalError: 500.
    simulator()
    settings.API_KEY_CACHE_SECONDS = 0  # every request looks the key up again
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=headers).status_code == 200  # cached now
    with database_away() as refused:
        answers = [client.get("/v1/models", headers=headers) for _ in range(3)]
    assert refused, "the key was not looked up again: the test proves nothing"
    assert [a.status_code for a in answers] == [200, 200, 200]


def test_it_answers_503_for_a_key_it_never_saw_while_the_database_is_away(
    client, simulator, make_key
):
    simulator()
    key = make_key()
    with database_away():
        answer = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 503
    assert answer["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "database_unavailable"

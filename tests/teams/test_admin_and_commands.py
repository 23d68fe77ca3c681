"""The team pages of the admin (list with quota bars, members on the form, the chart
and CSV per team and per key) and the commands: `team add/list/set` and
`create_api_key --tokens-per-day --tokens-per-month --team`."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from modelmgr.models import ApiKey, UsageDaily
from modelmgr.services import api_key_create
from teams.models import Team

pytestmark = pytest.mark.django_db


def usage(key: ApiKey, model: str, tokens: int, days_ago: int = 0) -> None:
    UsageDaily.objects.create(
        key_prefix=key.prefix,
        key_name=key.name,
        model=model,
        day=timezone.now().date() - timedelta(days=days_ago),
        requests=1,
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
    )


@pytest.fixture
def team_with_usage() -> tuple[Team, ApiKey]:
    team = Team.objects.create(name="research", tokens_per_day=1000, tokens_per_month=50_000)
    key, _ = api_key_create(name="=alice")
    key.team, key.tokens_per_day = team, 400
    key.save()
    usage(key, "demo-model", 300)
    usage(key, "other-model", 100)
    usage(key, "demo-model", 700, days_ago=3)
    return team, key


def test_it_lists_teams_with_their_usage_and_quota_bars(admin_client, team_with_usage):
    answer = admin_client.get("/admin/teams/team/")
    assert answer.status_code == 200
    page = answer.content.decode()
    assert "research" in page
    assert 'class="tt-quota-fill" style="width: 40%"' in page  # 400 of 1000 today
    assert "400&nbsp;/&nbsp;1000" in page


def test_the_team_page_shows_its_keys_and_sets_its_members(admin_client, team_with_usage):
    team, key = team_with_usage
    page = admin_client.get(f"/admin/teams/team/{team.pk}/change/").content.decode()
    assert key.prefix in page and "=alice" in page
    assert "400&nbsp;/&nbsp;400" in page  # the key's own quota, spent
    other, _ = api_key_create(name="bob")
    answer = admin_client.post(
        f"/admin/teams/team/{team.pk}/change/",
        {"name": "research", "description": "", "tokens_per_day": "2000", "members": [other.pk]},
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    assert list(team.keys.all()) == [other]
    team.refresh_from_db()
    assert team.tokens_per_day == 2000


def test_it_charts_tokens_per_day_by_model_for_a_team_and_a_key(admin_client, team_with_usage):
    team, key = team_with_usage
    for url in (
        f"/admin/teams/team/{team.pk}/usage/",
        f"/admin/teams/team/key/{key.prefix}/usage/",
    ):
        page = admin_client.get(url).content.decode()
        assert "tt-chart" in page
        assert "demo-model: 300 tokens" in page and "other-model: 100 tokens" in page
        assert page.count('class="tt-day"') == 30
        assert "<script" not in page.split('id="content-main"')[1]


def test_it_exports_usage_as_csv(admin_client, team_with_usage):
    team, key = team_with_usage
    answer = admin_client.get(f"/admin/teams/team/{team.pk}/usage.csv")
    assert answer["Content-Type"].startswith("text/csv")
    lines = answer.content.decode().splitlines()
    assert lines[0] == (
        "day,team,key_prefix,key_name,model,requests,errors,prompt_tokens,completion_tokens"
    )
    assert len(lines) == 4
    assert all(",research," + key.prefix + ",'=alice," in line for line in lines[1:])
    assert admin_client.get(f"/admin/teams/team/key/{key.prefix}/usage.csv").status_code == 200
    assert len(admin_client.get("/admin/teams/team/usage.csv").content.decode().splitlines()) == 4


def test_the_team_command_adds_lists_and_sets(team_with_usage):
    _team, key = team_with_usage
    call_command("team", "add", "ops", "--tokens-per-day", "500", "--key-tokens-per-month", "90")
    ops = Team.objects.get(name="ops")
    assert (ops.tokens_per_day, ops.key_tokens_per_month) == (500, 90)
    call_command("team", "set", "ops", "--tokens-per-day", "none", "--add-key", key.prefix)
    ops.refresh_from_db()
    assert ops.tokens_per_day is None and list(ops.keys.all()) == [key]
    out = io.StringIO()
    call_command("team", "list", stdout=out)
    assert "ops" in out.getvalue() and key.prefix in out.getvalue()
    call_command("team", "set", "ops", "--remove-key", key.prefix)
    assert not ops.keys.exists()
    with pytest.raises(CommandError, match="exists already"):
        call_command("team", "add", "ops")
    with pytest.raises(CommandError, match="no team"):
        call_command("team", "set", "nobody", "--tokens-per-day", "1")


def test_create_api_key_takes_quotas_and_a_team():
    Team.objects.create(name="research")
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_api_key",
        "--name",
        "carol",
        "--tokens-per-day",
        "600",
        "--tokens-per-month",
        "9000",
        "--team",
        "research",
        stdout=out,
        stderr=err,
    )
    key = ApiKey.objects.get(name="carol")
    assert (key.tokens_per_day, key.tokens_per_month, key.team.name) == (600, 9000, "research")
    with pytest.raises(CommandError, match="no team"):
        call_command("create_api_key", "--name", "dave", "--team", "nope", stdout=out, stderr=err)
    with pytest.raises(CommandError, match="negative"):
        call_command("create_api_key", "--name", "eve", "--tokens-per-day", "-1", stdout=out)

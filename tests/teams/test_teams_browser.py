"""The teams' usage charts in a real browser (headless Chromium, tests/browser.py)
against the gateway on a real socket: a team's chart of tokens per day by model over 30
days with its quota bars and legend, a key's, both fitting a 390 px phone without a
console error."""

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from modelmgr import services
from modelmgr.models import UsageDaily
from teams.services import api_key_team_set, team_create
from tests.browser import admin_login, browser_page
from tests.modelmgr.test_admin_pages_browser import collected_static  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-test-password-1"


def test_a_teams_chart_and_quota_bars_show_in_a_browser(
    gateway: Any,
    collected_static: None,  # noqa: F811 - the admin's CSS where DEBUG=false serves it
) -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    team = team_create(name="research", tokens_per_day=100_000, tokens_per_month=2_000_000)
    key, _ = services.api_key_create(name="laptop", scopes=["inference"])
    api_key_team_set(key=key, team=team)
    today = timezone.now().date()
    for days_ago, model, tokens in [(0, "org/a", 9000), (0, "org/b", 3000), (4, "org/a", 6000)]:
        UsageDaily.objects.create(
            key_prefix=key.prefix,
            key_name=key.name,
            model=model,
            day=today - timedelta(days=days_ago),
            requests=3,
            prompt_tokens=tokens // 3,
            completion_tokens=tokens - tokens // 3,
        )
    team_chart = reverse("admin:teams_team_usage", args=[team.pk])
    key_chart = reverse("admin:teams_key_usage", args=[key.prefix])
    errors: list[str] = []
    with browser_page(width=390, height=844) as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        admin_login(page, gateway.url, "root", PASSWORD)
        for url in (team_chart, key_chart):
            page.goto(gateway.url + url)
            days = page.locator(".tt-chart .tt-day")
            assert days.count() == 30
            bars = page.locator(".tt-chart .tt-day span")
            # Three (day, model) parts drawn, each with a height the browser laid out.
            assert bars.count() == 3
            heights = [bars.nth(i).bounding_box()["height"] for i in range(3)]
            assert all(height > 0 for height in heights), heights
            legend = page.locator(".tt-legend").inner_text()
            assert "org/a" in legend and "org/b" in legend
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{url} overflows a 390 px phone by {overflow} px"
        page.goto(gateway.url + team_chart)
        # Today's 12,000 of the team's 100,000 a day (and this month's, at least that).
        day_bar = page.locator(".tt-quotas .tt-quota", has_text="day")
        assert day_bar.inner_text().replace("\xa0", " ").endswith("12000 / 100000")
        fill = page.locator(".tt-quotas .tt-quota-fill").first.bounding_box()
        track = page.locator(".tt-quotas .tt-quota-track").first.bounding_box()
        assert fill is not None and track is not None
        assert 0.08 < fill["width"] / track["width"] < 0.16  # 12% drawn
    assert errors == []

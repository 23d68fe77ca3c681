"""The admin's team pages: teams with their keys, usage and quota bars, membership on
the team's form, and per team and per key a chart of tokens per day by model over the
last 30 days with CSV export (plain HTML and CSS, no script)."""

import csv
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from modelmgr.models import ApiKey
from teams import selectors
from teams.limits import TokenQuota
from teams.models import TEAM_FIELDS, Team
from teams.selectors import QuotaBar

CHART_DAYS = 30
# Series colours of the chart, one per model (repeating past eight); legible on the
# admin's light and dark themes.
PALETTE = ("#2f6fb0", "#d9822b", "#3a9a5b", "#b8476a", "#7a5bb5", "#2b9aa0", "#a0862b", "#6b6b6b")


def bars_html(bars: list[QuotaBar]) -> SafeString:
    """Quota bars: what of each quota its current window used (the usage table's)."""
    if not bars:
        return format_html('<span class="quiet">{}</span>', "no quota")
    return format_html_join(
        "",
        '<div class="tt-quota" title="{} of {} tokens this {}">'
        '<span class="tt-quota-label">{}</span>'
        '<span class="tt-quota-track"><span class="tt-quota-fill{}" style="width: {}%"></span>'
        "</span> {}&nbsp;/&nbsp;{}</div>",
        (
            (
                bar.used,
                bar.limit,
                bar.period,
                "day" if bar.period == "day" else "month",
                " tt-quota-full" if bar.percent >= 100 else "",
                bar.percent,
                bar.used,
                bar.limit,
            )
            for bar in bars
        ),
    )


def _team_bars(team: Team) -> list[QuotaBar]:
    return selectors.quota_bars(
        team_id=team.pk, limits={"day": team.tokens_per_day, "month": team.tokens_per_month}
    )


class TeamForm(forms.ModelForm):
    members = forms.ModelMultipleChoiceField(
        queryset=ApiKey.objects.order_by("name"),
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 10}),
        help_text="The keys in this team (a key is in one team at most: choosing it here "
        "takes it out of another).",
    )

    class Meta:
        model = Team
        fields = list(TEAM_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["members"].initial = list(self.instance.keys.values_list("pk", flat=True))


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    form = TeamForm
    list_display = ["name", "key_count", "tokens_today", "tokens_this_month", "quota", "usage"]
    search_fields = ["name", "description"]
    readonly_fields = ["member_keys", "usage"]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        (
            "Token quotas (prompt + completion tokens, calendar days and months)",
            {
                "fields": [
                    "tokens_per_day",
                    "tokens_per_month",
                    "key_tokens_per_day",
                    "key_tokens_per_month",
                ],
                "description": "The team's quotas bind all its keys together; the keys' "
                "defaults apply to each member key that sets no quota of its own.",
            },
        ),
        ("Keys", {"fields": ["members", "member_keys"]}),
        ("Usage", {"fields": ["usage"]}),
    ]

    class Media:
        css = {"all": ["teams/teams.css"]}

    @admin.display(description="keys")
    def key_count(self, team: Team) -> int:
        return team.keys.count()

    @admin.display(description="tokens today")
    def tokens_today(self, team: Team) -> int:
        return selectors.team_tokens(team=team, period="day")

    @admin.display(description="tokens this month")
    def tokens_this_month(self, team: Team) -> int:
        return selectors.team_tokens(team=team, period="month")

    @admin.display(description="team quota")
    def quota(self, team: Team) -> SafeString:
        return bars_html(_team_bars(team))

    @admin.display(description="usage")
    def usage(self, team: Team) -> SafeString:
        if not team.pk:
            return format_html("{}", "-")
        return format_html(
            '<a href="{}">tokens per day, {} days</a> · <a href="{}">CSV</a>',
            reverse("admin:teams_team_usage", args=[team.pk]),
            CHART_DAYS,
            reverse("admin:teams_team_usage_csv", args=[team.pk]),
        )

    @admin.display(description="members' usage and quotas")
    def member_keys(self, team: Team) -> SafeString:
        if not team.pk:
            return format_html("{}", "Save the team first.")
        rows = selectors.team_keys(team=team)
        if not rows:
            return format_html("{}", "No keys yet.")
        body = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a> <code>{}</code></td><td>{}</td><td>{}</td>'
            '<td>{}</td><td><a href="{}">chart</a> · <a href="{}">CSV</a></td></tr>',
            (
                (
                    reverse("admin:modelmgr_apikey_change", args=[row.key.pk]),
                    row.key.name,
                    row.key.prefix,
                    row.today,
                    row.month,
                    bars_html(row.bars),
                    reverse("admin:teams_key_usage", args=[row.key.prefix]),
                    reverse("admin:teams_key_usage_csv", args=[row.key.prefix]),
                )
                for row in rows
            ),
        )
        return format_html(
            '<table class="tt-members"><thead><tr><th>key</th><th>tokens today</th>'
            "<th>this month</th><th>key quota</th><th>usage</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            body,
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        team, chosen = form.instance, form.cleaned_data["members"]
        ApiKey.objects.filter(team=team).exclude(pk__in=chosen).update(team=None)
        ApiKey.objects.filter(pk__in=chosen).update(team=team)

    # --- charts and CSV ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:team_id>/usage/",
                self.admin_site.admin_view(self.team_usage_view),
                name="teams_team_usage",
            ),
            path(
                "<int:team_id>/usage.csv",
                self.admin_site.admin_view(self.team_usage_csv),
                name="teams_team_usage_csv",
            ),
            path(
                "key/<str:prefix>/usage/",
                self.admin_site.admin_view(self.key_usage_view),
                name="teams_key_usage",
            ),
            path(
                "key/<str:prefix>/usage.csv",
                self.admin_site.admin_view(self.key_usage_csv),
                name="teams_key_usage_csv",
            ),
            path(
                "usage.csv",
                self.admin_site.admin_view(self.all_usage_csv),
                name="teams_usage_csv",
            ),
        ]
        return own + super().get_urls()

    def _may_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def team_usage_view(self, request: HttpRequest, team_id: int) -> TemplateResponse:
        self._may_view(request)
        team = get_object_or_404(Team, pk=team_id)
        chart = selectors.tokens_per_day(team_id=team.pk, days=CHART_DAYS)
        return self._chart(
            request,
            title=f"Team {team.name}: tokens per day",
            chart=chart,
            bars=_team_bars(team),
            csv_url=reverse("admin:teams_team_usage_csv", args=[team.pk]),
            back_url=reverse("admin:teams_team_change", args=[team.pk]),
        )

    def key_usage_view(self, request: HttpRequest, prefix: str) -> TemplateResponse:
        self._may_view(request)
        key = get_object_or_404(ApiKey.objects.select_related("team"), prefix=prefix)
        chart = selectors.tokens_per_day(key_prefix=key.prefix, days=CHART_DAYS)
        quota = TokenQuota.of(key)
        bars = selectors.quota_bars(
            key_prefix=key.prefix, limits={"day": quota.key_per_day, "month": quota.key_per_month}
        )
        return self._chart(
            request,
            title=f"Key {key.name} ({key.prefix}): tokens per day",
            chart=chart,
            bars=bars,
            csv_url=reverse("admin:teams_key_usage_csv", args=[key.prefix]),
            back_url=reverse("admin:modelmgr_apikey_change", args=[key.pk]),
        )

    def _chart(
        self,
        request: HttpRequest,
        *,
        title: str,
        chart: dict[str, Any],
        bars: list[QuotaBar],
        csv_url: str,
        back_url: str,
    ) -> TemplateResponse:
        peak = max(chart["totals"], default=0) or 1
        colours = {
            model: PALETTE[i % len(PALETTE)] for i, model in enumerate(sorted(chart["models"]))
        }
        columns = []
        for i, day in enumerate(chart["days"]):
            parts = [
                {
                    "model": model,
                    "tokens": series[i],
                    "colour": colours[model],
                    "percent": round(100 * series[i] / peak, 2),
                }
                for model, series in sorted(chart["models"].items())
                if series[i]
            ]
            columns.append({"day": day, "total": chart["totals"][i], "parts": parts})
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "columns": columns,
            "legend": list(colours.items()),
            "peak": peak,
            "total": sum(chart["totals"]),
            "bars": bars_html(bars),
            "csv_url": csv_url,
            "back_url": back_url,
            "days": CHART_DAYS,
        }
        return TemplateResponse(request, "teams/usage_chart.html", context)

    def team_usage_csv(self, request: HttpRequest, team_id: int) -> HttpResponse:
        self._may_view(request)
        team = get_object_or_404(Team, pk=team_id)
        rows = selectors.usage_export_rows(team_id=team.pk, days=CHART_DAYS)
        return _csv(rows, f"usage-team-{team.pk}.csv")

    def key_usage_csv(self, request: HttpRequest, prefix: str) -> HttpResponse:
        self._may_view(request)
        key = get_object_or_404(ApiKey, prefix=prefix)
        rows = selectors.usage_export_rows(key_prefixes=[key.prefix], days=CHART_DAYS)
        return _csv(rows, f"usage-{key.prefix}.csv")

    def all_usage_csv(self, request: HttpRequest) -> HttpResponse:
        self._may_view(request)
        return _csv(selectors.usage_export_rows(days=CHART_DAYS), "usage.csv")


CSV_FIELDS = [
    "day",
    "team",
    "key_prefix",
    "key_name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
]


def _csv(rows: list[dict[str, Any]], filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.DictWriter(response, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        # A key name is the admin's text: a leading =, +, - or @ would be a formula to
        # a spreadsheet opening the file.
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return response


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value

"""The Django admin: keys and usage, and the model lifecycle (downloads with live
progress, downloaded models and switching, switch history with a live phase, workers,
a dashboard).

A new key's plaintext is shown exactly once, on the page that answers the save (never
in a redirect, a message, a cookie or the session); only its digest is stored.
Lifecycle rows are read-only here: every change goes through the services in
modelmgr/services.py (admin_views.py holds the pages beyond plain lists).
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from modelmgr import admin_views, selectors, services
from modelmgr.login_throttle import ThrottledAdminLoginForm
from modelmgr.models import (
    ApiKey,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    Scope,
    ServedModel,
    Tier,
    UsageDaily,
    WorkerHeartbeat,
)
from modelmgr.selectors import usage_rows, usage_summary
from modelmgr.services import api_key_create, api_key_revoke
from plumbing.errors import TalkTuahError

# Failed logins are counted and, past a few a minute, refused (modelmgr/login_throttle.py).
admin.site.login_form = ThrottledAdminLoginForm
admin.site.site_header = "TalkTuah"
admin.site.site_title = "TalkTuah admin"
admin.site.index_title = "Gateway operations"
# "View site": the human landing page (/ itself is the API's JSON index for clients).
admin.site.site_url = "/about/"

# How many days of a key's usage its page shows.
KEY_PAGE_USAGE_DAYS = 30
# Where save_model leaves a new key's plaintext for response_add, on the request of the
# save itself: it lives as long as that request and is never written anywhere.
NEW_KEY_ATTRIBUTE = "_talktuah_new_key"


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.INFERENCE]
    )
    allowed_models = forms.CharField(
        required=False,
        help_text="Comma-separated served model names this key may use; empty = all.",
    )

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "owner",
            "scopes",
            "allowed_models",
            "rpm_limit",
            "tpm_limit",
            "tier",
            "share",
            "max_parallel_requests",
            "is_active",
            "expires_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_models"] = ", ".join(self.instance.allowed_models)
        # Left out of a form (an older client of this page): the defaults apply.
        self.fields["tier"].required = False
        self.fields["share"].required = False

    def clean_tier(self) -> str:
        return self.cleaned_data.get("tier") or Tier.INTERACTIVE

    def clean_share(self) -> int:
        return max(self.cleaned_data.get("share") or 1, 1)

    def clean_allowed_models(self) -> list[str]:
        raw = self.cleaned_data.get("allowed_models") or ""
        return sorted({name.strip() for name in raw.split(",") if name.strip()})


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "scope_list",
        "tier",
        "is_active",
        "expires_at",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    actions = ["revoke"]

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        key = ApiKey.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        extra = dict(extra_context or {})
        if key is not None:
            extra["key_usage"] = usage_rows(key_prefix=key.prefix, days=KEY_PAGE_USAGE_DAYS)
            extra["key_usage_days"] = KEY_PAGE_USAGE_DAYS
            extra["key_usage_url"] = (
                reverse("admin:modelmgr_usagedaily_changelist") + f"?key={key.prefix}"
            )
        return super().change_view(request, object_id, form_url, extra)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new key's secret, on a page of its own in the answer to the save: not a
        redirect with a message (Django's messages travel in a signed, readable cookie).
        Not cached, and never shown again."""
        plaintext = getattr(request, NEW_KEY_ATTRIBUTE, None)
        if plaintext is None:  # saved some other way: the default answer
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Key {obj.name} created",
            "opts": self.model._meta,
            "key": obj,
            "plaintext": plaintext,
        }
        response = TemplateResponse(request, "admin/modelmgr/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # The same service as the command and the tests: the admin only collects the fields.
        data = form.cleaned_data
        key, plaintext = api_key_create(
            name=data["name"],
            owner=data.get("owner"),
            scopes=data["scopes"],
            allowed_models=data.get("allowed_models") or (),
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            expires_at=data.get("expires_at"),
            is_active=data.get("is_active", True),
            tier=data.get("tier") or "interactive",
            share=data.get("share") or 1,
            max_parallel_requests=data.get("max_parallel_requests"),
        )
        obj.pk = key.pk
        obj.refresh_from_db()
        setattr(request, NEW_KEY_ATTRIBUTE, plaintext)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(
            request, f"Revoked {queryset.count()} key(s); they stop working within seconds."
        )


class KeyFilter(admin.SimpleListFilter):
    """Daily usage of one key (by prefix: a renamed key keeps its rows)."""

    title = "key"
    parameter_name = "key"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        pairs = UsageDaily.objects.values_list("key_prefix", "key_name").distinct()
        named: dict[str, str] = {}
        for prefix, name in pairs.order_by("key_prefix", "-day"):
            named.setdefault(prefix, name)
        return sorted(((p, f"{n} ({p})") for p, n in named.items()), key=lambda x: x[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageDaily]) -> Any:
        value = self.value()
        return queryset.filter(key_prefix=value) if value else queryset


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    list_display = [
        "day",
        "key_link",
        "key_prefix",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
    ]
    list_filter = [KeyFilter, "day", "model"]
    search_fields = ["key_name", "key_prefix", "model"]
    date_hierarchy = "day"
    change_list_template = "admin/modelmgr/usagedaily/change_list.html"

    @admin.display(description="key", ordering="key_name")
    def key_link(self, obj: UsageDaily) -> SafeString | str:
        key = ApiKey.objects.filter(prefix=obj.key_prefix).only("pk").first()
        if key is None:  # a deleted key keeps its usage rows
            return obj.key_name
        url = reverse("admin:modelmgr_apikey_change", args=[key.pk])
        return format_html('<a href="{}">{}</a>', url, obj.key_name)

    def get_urls(self) -> list[URLPattern]:
        summary = self.admin_site.admin_view(self.summary_view)
        return [path("summary/", summary, name="modelmgr_usage_summary"), *super().get_urls()]

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        """Totals per key and a chart of tokens per day."""
        try:
            days = min(max(int(request.GET.get("days", 30)), 1), 366)
        except ValueError:
            days = 30
        summary = usage_summary(days=days)
        peak = max((d["tokens"] for d in summary["per_day"]), default=0) or 1
        bar_width = 600 / days
        bars = [
            {
                **d,
                "x": round(i * bar_width, 2),
                "width": round(max(bar_width - 1, 1), 2),
                "height": round(120 * d["tokens"] / peak, 2),
                "y": round(120 - 120 * d["tokens"] / peak, 2),
            }
            for i, d in enumerate(summary["per_day"])
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Usage of the last {days} days",
            "opts": self.model._meta,
            "summary": summary,
            "bars": bars,
            "peak": peak,
        }
        return TemplateResponse(request, "admin/modelmgr/usagedaily/summary.html", context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- model lifecycle --------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only the lifecycle services and the worker write."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DownloadJob)
class DownloadJobAdmin(ReadOnlyAdmin):
    # Few and narrow columns: at 1280 px beside the navigation every one shows whole,
    # the error (the one an operator looks for) included.
    list_display = [
        "repo",
        "status_cell",
        "progress",
        "speed",
        "requested_by_cell",
        "when",
        "error_cell",
    ]
    list_display_links = ["repo"]
    list_filter = ["status", "auto_switch"]
    search_fields = ["repo_id", "requested_by"]
    actions = ["cancel", "retry"]
    readonly_fields = ["progress"]
    fields = [
        "repo_id",
        "revision",
        "commit",
        "status",
        "progress",
        "auto_switch",
        "cancel_requested",
        "requested_by",
        "worker",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "file_progress",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Adding means "start a download" (the service's form, not a ModelForm).
        return request.user.has_perm("modelmgr.add_downloadjob")

    def has_lifecycle_permission(self, request: HttpRequest) -> bool:
        """Cancel and retry: whoever may start downloads."""
        return self.has_add_permission(request)

    def get_urls(self) -> list[URLPattern]:
        progress = self.admin_site.admin_view(self.progress_view)
        # Before the default patterns, whose "<path:object_id>/" would swallow it.
        return [
            path("progress.json", progress, name="modelmgr_downloadjob_progress"),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.download_progress_view(self, request)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return admin_views.download_add_view(self, request)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Only on GET: after an action's redirect the warning would show twice.
        if request.method == "GET":
            waiting = DownloadJob.objects.filter(status=DownloadStatus.QUEUED)
            for backend in sorted(set(waiting.values_list("backend", flat=True))):
                if not selectors.worker_alive(backend):
                    messages.warning(request, selectors.worker_missing(backend))
        return super().changelist_view(request, extra_context)

    @admin.display(description="repo", ordering="repo_id")
    def repo(self, obj: DownloadJob) -> str:
        return obj.repo_id if obj.revision == "main" else f"{obj.repo_id}@{obj.revision}"

    @admin.display(description="created · finished", ordering="created_at")
    def when(self, obj: DownloadJob) -> SafeString:
        return admin_views.when_cell(obj.created_at, obj.finished_at)

    @admin.display(description="status", ordering="status")
    def status_cell(self, obj: DownloadJob) -> SafeString:
        return admin_views.live_field(obj, "status", obj.status)

    @admin.display(description="progress")
    def progress(self, obj: DownloadJob) -> SafeString:
        return admin_views.progress_bar(obj)

    @admin.display(description="speed")
    def speed(self, obj: DownloadJob) -> SafeString:
        return admin_views.live_field(obj, "speed_label", admin_views.job_speed(obj))

    @admin.display(description="error")
    def error_cell(self, obj: DownloadJob) -> SafeString:
        preview = admin_views.error_preview(obj.error)
        return admin_views.live_field(obj, "error_preview", preview, obj.error)

    @admin.display(description="requested by", ordering="requested_by")
    def requested_by_cell(self, obj: DownloadJob) -> SafeString | str:
        return admin_views.requested_by_link(obj.requested_by)

    @admin.action(description="Cancel the selected downloads", permissions=["lifecycle"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        for job in queryset:
            try:
                job = services.download_cancel(job=job)
            except TalkTuahError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            if job.status == DownloadStatus.CANCELLED:
                self.message_user(request, f"Cancelled the download of {job.repo_id}.")
            else:
                self.message_user(
                    request, f"Asked the worker to stop the download of {job.repo_id}."
                )

    @admin.action(description="Retry the selected downloads", permissions=["lifecycle"])
    def retry(self, request: HttpRequest, queryset: QuerySet[DownloadJob]) -> None:
        for job in queryset:
            try:
                new_job = services.download_retry(
                    job=job, requested_by=admin_views.admin_actor(request)
                )
            except TalkTuahError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            self.message_user(
                request,
                f"Queued {new_job.repo_id} again (job {new_job.pk}); files already "
                "complete are not fetched again.",
            )


@admin.register(ServedModel)
class ServedModelAdmin(ReadOnlyAdmin):
    """Its list is the downloaded models page (the Hugging Face cache is the truth about
    what is on disk); the confirm page and the dashboard hang off its URLs."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("serve/", wrap(self.serve_view), name="modelmgr_servedmodel_serve"),
            path("dashboard/", wrap(self.dashboard_view), name="talktuah_dashboard"),
            path(
                "restart/<str:name>/",
                wrap(self.restart_view),
                name="talktuah_restart_engine",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return admin_views.downloaded_models_view(self, request)

    def serve_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.serve_confirm_view(self, request)

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.dashboard_view(self, request)

    def restart_view(self, request: HttpRequest, name: str) -> HttpResponse:
        return admin_views.restart_engine_view(self, request, name)


@admin.register(ModelSwitch)
class ModelSwitchAdmin(ReadOnlyAdmin):
    """The switch history; the phase, duration and error of a switch in progress stay
    live (templates/admin/modelmgr/includes/switch_status.html polls status.json)."""

    list_display = [
        "transition",
        "phase_cell",
        "requested_by_cell",
        "cause",
        "created",
        "duration",
        "error_preview",
    ]
    list_filter = ["phase", "kind", "backend"]
    search_fields = ["from_model", "to_model", "requested_by"]
    readonly_fields = ["duration", "cause", "requested_by_cell"]
    change_list_template = "admin/modelmgr/modelswitch/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        status = self.admin_site.admin_view(self.status_view)
        # Before the default patterns, whose "<path:object_id>/" would swallow it.
        return [
            path("status.json", status, name="modelmgr_modelswitch_status"),
            *super().get_urls(),
        ]

    def status_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.switch_status_view(self, request)

    @admin.display(description="from → to")
    def transition(self, obj: ModelSwitch) -> str:
        return admin_views.switch_transition(obj)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: ModelSwitch) -> SafeString:
        return admin_views.when_cell(obj.created_at, None)

    @admin.display(description="phase", ordering="phase")
    def phase_cell(self, obj: ModelSwitch) -> SafeString:
        return admin_views.live_switch_field(obj, "phase", obj.phase)

    @admin.display(description="duration (s)")
    def duration(self, obj: ModelSwitch) -> SafeString:
        label = admin_views.switch_duration_label(obj)
        return admin_views.live_switch_field(obj, "duration_label", label)

    @admin.display(description="error")
    def error_preview(self, obj: ModelSwitch) -> SafeString:
        preview = admin_views.error_preview(obj.error)
        # The whole error is on the switch's page (its link is the first column).
        return admin_views.live_switch_field(obj, "error_preview", preview)

    @admin.display(description="requested by", ordering="requested_by")
    def requested_by_cell(self, obj: ModelSwitch) -> SafeString | str:
        return admin_views.requested_by_link(obj.requested_by)

    @admin.display(description="caused by")
    def cause(self, obj: ModelSwitch) -> SafeString | str:
        return admin_views.switch_cause_link(obj)


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["name", "pid", "started_at", "last_seen", "current"]
    ordering = ["-last_seen"]

"""The Django admin: keys and usage, and the model lifecycle (downloads with live
progress, downloaded models and switching, switch history, workers, a dashboard).

A new key's plaintext is shown exactly once, in the message after saving; only its
digest is stored. Lifecycle rows are read-only here: every change goes through the
services in modelmgr/services.py (admin_views.py holds the pages beyond plain lists).
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
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
from modelmgr.selectors import usage_summary
from modelmgr.services import api_key_create, api_key_revoke
from plumbing.errors import TalkTuahError

# Failed logins are counted and, past a few a minute, refused (modelmgr/login_throttle.py).
admin.site.login_form = ThrottledAdminLoginForm


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
        messages.warning(
            request,
            f"The new key is {plaintext} — copy it now: it is stored only as a digest "
            "and will not be shown again.",
        )

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(
            request, f"Revoked {queryset.count()} key(s); they stop working within seconds."
        )


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    list_display = [
        "day",
        "key_name",
        "key_prefix",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
    ]
    list_filter = ["day", "model"]
    search_fields = ["key_name", "key_prefix", "model"]
    date_hierarchy = "day"
    change_list_template = "admin/modelmgr/usagedaily/change_list.html"

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
    list_display = [
        "repo_id",
        "revision",
        "status_cell",
        "progress",
        "speed",
        "requested_by",
        "created_at",
        "finished_at",
        "error_cell",
    ]
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


@admin.register(ModelSwitch)
class ModelSwitchAdmin(ReadOnlyAdmin):
    list_display = [
        "transition",
        "phase",
        "requested_by",
        "created_at",
        "duration",
        "error_preview",
    ]
    list_filter = ["phase"]
    search_fields = ["from_model", "to_model", "requested_by"]
    readonly_fields = ["duration"]

    @admin.display(description="from → to")
    def transition(self, obj: ModelSwitch) -> str:
        return f"{obj.from_model or '—'} → {obj.to_model}"

    @admin.display(description="duration (s)")
    def duration(self, obj: ModelSwitch) -> str:
        seconds = obj.duration_seconds
        return "" if seconds is None else f"{seconds:.1f}"

    @admin.display(description="error")
    def error_preview(self, obj: ModelSwitch) -> str:
        return admin_views.error_preview(obj.error)


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["name", "pid", "started_at", "last_seen", "current"]
    ordering = ["-last_seen"]

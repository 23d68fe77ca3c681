"""The admin pages of the model lifecycle that are more than a model list: the download
form, the progress JSON the list's poller reads, the switch status JSON the switch
list's and the dashboard's poller reads, the downloaded models with "serve this model"
and its confirm page, and the TalkTuah dashboard.

Each page reads or changes state only through modelmgr.lifecycle, the services the API
and the worker call too; a refused request (LifecycleError) becomes an admin message.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from backends import health
from backends.discovery import backend_resolve, backend_specs
from backends.health import BackendHealth
from backends.models import DEFAULT_BACKEND
from backends.pool import pool
from backends.spec import BackendSpec, default_spec
from modelmgr import selectors, services
from modelmgr.models import ApiKey, DownloadJob, DownloadStatus, ModelSwitch
from plumbing.errors import TalkTuahError

# The poller asks for the active jobs of one page; more than a page never makes sense.
MAX_POLLED_JOBS = 200
ERROR_PREVIEW_CHARS = 80
# Switch history rows are never added by hand (the admin refuses it), so the add
# permission of ModelSwitch is free to mean "may ask for a switch".
SWITCH_PERMISSION = "modelmgr.add_modelswitch"


def chosen_backend(request: HttpRequest) -> BackendSpec:
    """The backend a page is about: ?backend= (or the form's field), else the first.
    Raises TalkTuahError for a name that is not an enabled backend."""
    name = request.POST.get("backend") or request.GET.get("backend")
    if name:
        return backend_resolve(name)
    specs = backend_specs()
    return specs[0] if specs else default_spec()


def backend_choices() -> list[tuple[str, str]]:
    return [(spec.name, f"{spec.name} ({spec.base_url})") for spec in backend_specs()]


def admin_actor(request: HttpRequest) -> str:
    """Who the lifecycle records as having asked, for requests made in the admin."""
    return f"admin:{request.user.get_username()}"


def human_size(size_bytes: int) -> str:
    return str(filesizeformat(size_bytes))


def when_cell(started: datetime | None, finished: datetime | None) -> SafeString:
    """A short date and time (the full one in its tooltip), and the end's time beneath:
    list columns narrow enough for a 1280 px screen."""

    def short(moment: datetime) -> str:
        return f"{timezone.localtime(moment):%Y-%m-%d %H:%M}"

    if started is None:
        return format_html("{}", "—")
    first = format_html('<span title="{}">{}</span>', timezone.localtime(started), short(started))
    if finished is None:
        return first
    same_day = timezone.localtime(finished).date() == timezone.localtime(started).date()
    end = f"{timezone.localtime(finished):%H:%M}" if same_day else short(finished)
    return format_html(
        '{}<br><span class="quiet" title="{}">→ {}</span>', first, timezone.localtime(finished), end
    )


def requested_by_link(requested_by: str) -> SafeString | str:
    """Who asked, linked to their page where there is one: `admin:<user>` (admin_actor)
    to the user, `key:<name> (<prefix>)` (the management API) to the key."""
    if not requested_by:
        return "—"
    url = None
    kind, _, who = requested_by.partition(":")
    if kind == "admin" and who:
        user = get_user_model().objects.filter(username=who).first()
        if user is not None:
            url = reverse("admin:auth_user_change", args=[user.pk])
    elif kind == "key" and who.endswith(")") and "(" in who:
        prefix = who[who.rindex("(") + 1 : -1]
        key = ApiKey.objects.filter(prefix=prefix).first()
        if key is not None:
            url = reverse("admin:modelmgr_apikey_change", args=[key.pk])
    if url is None:
        return requested_by
    return format_html('<a href="{}">{}</a>', url, requested_by)


# --- progress bars -------------------------------------------------------------------
# The same three helpers label the rows rendered by the server and the updates the
# poller applies, so a bar reads the same before and after its first refresh.


def progress_label(
    *,
    bytes_done: int,
    bytes_total: int,
    percent: float,
    files_done: int,
    files_total: int,
    current_file: str | None,
) -> str:
    if not bytes_total and not files_total:
        return "waiting for the file list"
    parts = [
        f"{human_size(bytes_done)} / {human_size(bytes_total)}",
        f"{percent:.1f}%",
        f"files {files_done}/{files_total}",
    ]
    if current_file:
        parts.append(current_file)
    return " · ".join(parts)


def speed_label(progress: dict[str, Any]) -> str:
    speed = progress["speed_bytes_per_second"]
    if not speed:
        return ""
    eta = progress["eta_seconds"]
    suffix = f", {eta:.0f} s left" if eta is not None else ""
    return f"{human_size(speed)}/s{suffix}"


def error_preview(error: str | None) -> str:
    return Truncator(error or "").chars(ERROR_PREVIEW_CHARS)


def progress_bar(job: DownloadJob) -> SafeString:
    """The bar the poller finds by data-tt-job and keeps up to date while it is active."""
    label = progress_label(
        bytes_done=job.bytes_done,
        bytes_total=job.bytes_total,
        percent=job.percent,
        files_done=job.files_done,
        files_total=job.files_total,
        current_file=job.current_file,
    )
    return format_html(
        '<div class="tt-progress" data-tt-job="{}" data-tt-status="{}">'
        '<div class="tt-progress-track"><div class="tt-progress-fill" style="width: {}%">'
        '</div></div><div class="tt-progress-text">{}</div></div>',
        job.pk,
        job.status,
        # A locale-independent number: the style attribute needs a dot, never a comma.
        f"{min(job.percent, 100.0):.1f}",
        label,
    )


def live_field(job: DownloadJob, field: str, text: str, title: str = "") -> SafeString:
    """A cell the poller rewrites: data-tt-field names the key of the progress JSON."""
    return format_html(
        '<span data-tt-field="{}" data-tt-for="{}" title="{}">{}</span>', field, job.pk, title, text
    )


def job_speed(job: DownloadJob) -> str:
    # Only a running job has a speed; download_progress also asks whether a worker is
    # alive, two queries per call, so it is not called for every row of the list.
    if job.status != DownloadStatus.RUNNING:
        return ""
    return speed_label(selectors.download_progress(job))


def progress_json(job: DownloadJob) -> dict[str, Any]:
    """selectors.download_progress plus the labels the page shows."""
    progress = selectors.download_progress(job)
    return {
        **progress,
        "label": progress_label(
            bytes_done=progress["bytes_completed"],
            bytes_total=progress["bytes_total"],
            percent=progress["percent"],
            files_done=progress["files_completed"],
            files_total=progress["files_total"],
            current_file=progress["current_file"],
        ),
        "speed_label": speed_label(progress),
        "error_preview": error_preview(progress["error"]),
    }


def download_progress_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> JsonResponse:
    """GET ?ids=1,2 → {"jobs": [progress, ...]} for the jobs that exist."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    try:
        ids = [int(part) for part in request.GET.get("ids", "").split(",") if part.strip()]
    except ValueError:
        return JsonResponse({"error": "ids: comma-separated job ids, e.g. ?ids=1,2"}, status=400)
    jobs = DownloadJob.objects.filter(pk__in=ids[:MAX_POLLED_JOBS]).order_by("pk")
    return JsonResponse({"jobs": [progress_json(job) for job in jobs]})


# --- live switch status ---------------------------------------------------------------
# As for the progress bars: cells marked data-tt-switch="<id>" data-tt-switch-field="<key>"
# show one key of switch_json(), and the poller (includes/switch_status.html) rewrites
# them while a switch on the page is in progress; the same helpers render the first look.


def switch_duration_label(switch: ModelSwitch) -> str:
    seconds = switch.duration_seconds
    return "" if seconds is None else f"{seconds:.1f}"


def switch_transition(switch: ModelSwitch) -> str:
    return f"{switch.from_model or '—'} → {switch.to_model}"


def switch_since(switch: ModelSwitch) -> str:
    changed = switch.phase_changed_at
    return f"since {timezone.localtime(changed):%H:%M:%S}" if changed else ""


def switch_json(switch: ModelSwitch) -> dict[str, Any]:
    """selectors.switch_summary plus the labels the pages show."""
    return {
        **selectors.switch_summary(switch),
        "kind": switch.kind,
        "is_active": switch.is_active,
        "transition": switch_transition(switch),
        "since": switch_since(switch),
        "duration_label": switch_duration_label(switch),
        "error_preview": error_preview(switch.error),
        "requested_by_label": switch.requested_by or "—",
        "created_label": f"{timezone.localtime(switch.created_at):%Y-%m-%d %H:%M:%S}",
    }


def live_switch_field(switch: ModelSwitch, field: str, content: str) -> SafeString:
    """A cell the switch poller rewrites (its innermost first element, so markup such
    as <strong> stays); the phase cell also says whether to keep asking."""
    phase = format_html(' data-tt-phase="{}"', switch.phase) if field == "phase" else ""
    return format_html(
        '<span data-tt-switch="{}" data-tt-switch-field="{}"{}>{}</span>',
        switch.pk,
        field,
        phase,
        content,
    )


def switch_status_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> JsonResponse:
    """GET ?ids=1,2 → {"switches": [...]} for the switches that exist; with latest=1 also
    "latest": the switch in progress, else the last one (the dashboard's card)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    try:
        ids = [int(part) for part in request.GET.get("ids", "").split(",") if part.strip()]
    except ValueError:
        return JsonResponse({"error": "ids: comma-separated switch ids, e.g. ?ids=1,2"}, status=400)
    switches = ModelSwitch.objects.filter(pk__in=ids[:MAX_POLLED_JOBS]).order_by("pk")
    answer: dict[str, Any] = {"switches": [switch_json(switch) for switch in switches]}
    if request.GET.get("latest"):
        latest = selectors.latest_switch()
        answer["latest"] = switch_json(latest) if latest else None
    return JsonResponse(answer)


def switch_cause_link(switch: ModelSwitch) -> SafeString | str:
    """The download whose "serve it when done" asked for this switch, linked."""
    job = selectors.switch_cause(switch)
    if job is None:
        return ""
    url = reverse("admin:modelmgr_downloadjob_change", args=[job.pk])
    return format_html('<a href="{}">download {}</a>', url, job.pk)


# --- the download form -----------------------------------------------------------------


class DownloadForm(forms.Form):
    backend = forms.ChoiceField(
        help_text="Whose host downloads it: its worker fetches into its Hugging Face cache.",
    )
    repo_id = forms.CharField(
        label="Repo id",
        max_length=200,
        help_text="A Hugging Face Hub repo, e.g. Qwen/Qwen2.5-0.5B-Instruct.",
        widget=forms.TextInput(attrs={"class": "vTextField", "autofocus": True}),
    )
    revision = forms.CharField(
        max_length=100,
        initial="main",
        required=False,
        help_text="A branch, tag or commit hash.",
        widget=forms.TextInput(attrs={"class": "vTextField"}),
    )
    auto_switch = forms.BooleanField(
        label="Serve it when done",
        required=False,
        help_text="Switch that backend's vLLM to this model as soon as the download succeeds.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["backend"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = backend_choices()
        if field.choices:
            field.initial = field.choices[0][0]


def download_add_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    form = DownloadForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            job, created = services.download_start(
                backend=backend_resolve(form.cleaned_data["backend"]),
                repo_id=form.cleaned_data["repo_id"],
                revision=form.cleaned_data["revision"],
                auto_switch=form.cleaned_data["auto_switch"],
                requested_by=admin_actor(request),
            )
        except TalkTuahError as exc:
            messages.error(request, exc.message)
        else:
            if created:
                messages.success(request, f"Queued the download of {job.repo_id}@{job.revision}.")
            else:
                messages.warning(
                    request,
                    f"{job.repo_id} is already {job.status} (job {job.pk}): no second download "
                    "was started; that one is below.",
                )
            return redirect("admin:modelmgr_downloadjob_changelist")
    opts = DownloadJob._meta
    backend = str(form["backend"].value() or DEFAULT_BACKEND)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Download a model from the Hub",
        "opts": opts,
        "form": form,
        "worker_alive": selectors.worker_alive(backend),
        "worker_missing": selectors.worker_missing(backend),
    }
    return TemplateResponse(request, "admin/modelmgr/downloadjob/download_form.html", context)


# --- downloaded models and switching -----------------------------------------------------


def downloaded_models_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    try:
        backend = chosen_backend(request)
    except TalkTuahError as exc:
        messages.error(request, exc.message)
        return redirect("admin:modelmgr_servedmodel_changelist")
    found = health.look_sync(backend, max_age=selectors.SHOWN_HEALTH_SECONDS)
    serve_url = reverse("admin:modelmgr_servedmodel_serve")
    name = backend.name
    rows = [
        {
            "model": model,
            "size": human_size(model.size_bytes),
            "serving": model.repo_id in found.models,
            "serve_url": serve_url + "?" + urlencode({"model": model.repo_id, "backend": name}),
        }
        for model in selectors.downloaded_models(backend=backend)
    ]
    models_url = reverse("admin:modelmgr_servedmodel_changelist")
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Downloaded models",
        "opts": model_admin.model._meta,
        "rows": rows,
        "probe": found,
        "backend": backend,
        "other_backends": [
            {"name": spec.name, "url": f"{models_url}?{urlencode({'backend': spec.name})}"}
            for spec in backend_specs()
            if spec.name != backend.name
        ],
        "switch": selectors.active_switch(backend.name),
        "can_switch": request.user.has_perm(SWITCH_PERMISSION),
        "engine": backend.engine.kind,
    }
    return TemplateResponse(request, "admin/modelmgr/servedmodel/downloaded_models.html", context)


def serve_confirm_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what serving the model will do. POST: ask the backend's worker to switch."""
    if not request.user.has_perm(SWITCH_PERMISSION):
        raise PermissionDenied
    models_url = reverse("admin:modelmgr_servedmodel_changelist")
    try:
        backend = chosen_backend(request)
    except TalkTuahError as exc:
        messages.error(request, exc.message)
        return redirect(models_url)
    back = f"{models_url}?{urlencode({'backend': backend.name})}"
    if request.method == "POST":
        try:
            switch = services.model_switch_request(
                repo_id=request.POST.get("model", ""),
                backend=backend,
                requested_by=admin_actor(request),
            )
        except TalkTuahError as exc:
            messages.error(request, exc.message)
            return redirect(back)
        return _switch_requested(
            request,
            backend,
            f"Switch requested on {backend.name}: {switch.from_model or 'nothing'} → "
            f"{switch.to_model}. vLLM restarts; follow the phase below.",
        )

    repo_id = request.GET.get("model", "").strip()
    downloaded = selectors.downloaded_models(backend=backend)
    target = next((m for m in downloaded if m.repo_id == repo_id), None)
    if target is None:
        messages.error(
            request, f"'{repo_id}' is not downloaded on backend {backend.name}: download it first."
        )
        return redirect(back)
    context = {
        **_engine_confirm_context(
            model_admin, request, backend, title=f"Serve {target.repo_id}?", back_url=back
        ),
        "target": target,
        "size": human_size(target.size_bytes),
        "wait_seconds": settings.SWITCH_WAIT_SECONDS,
        "timeout_seconds": backend.engine.switch_timeout_seconds,
    }
    return TemplateResponse(request, "admin/modelmgr/servedmodel/serve_confirm.html", context)


def restart_engine_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, name: str
) -> HttpResponse:
    """GET: what restarting a backend's vLLM will do. POST: ask its worker to restart
    it on the model it serves (services.engine_restart_request, as POST
    /api/restart-engine): a row of kind restart in the switch history."""
    if not request.user.has_perm(SWITCH_PERMISSION):
        raise PermissionDenied
    backends_url = reverse("admin:backends_backend_changelist")
    try:
        backend = backend_resolve(name)
    except TalkTuahError as exc:
        messages.error(request, exc.message)
        return redirect(backends_url)
    if request.method == "POST":
        try:
            restart = services.engine_restart_request(
                backend=backend, requested_by=admin_actor(request)
            )
        except TalkTuahError as exc:
            messages.error(request, exc.message)
            return redirect(backends_url)
        return _switch_requested(
            request,
            backend,
            f"Restart of {restart.to_model} requested on {backend.name}; follow the phase below.",
        )
    context = _engine_confirm_context(
        model_admin,
        request,
        backend,
        title=f"Restart the engine of {backend.name}?",
        back_url=backends_url,
    )
    return TemplateResponse(request, "admin/modelmgr/restart_confirm.html", context)


def _engine_confirm_context(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    backend: BackendSpec,
    *,
    title: str,
    back_url: str,
) -> dict[str, Any]:
    """What a page that asks to confirm a switch or restart of a backend's vLLM shows
    (admin/modelmgr/engine_confirm.html): what it serves, a switch that would refuse
    this one, its engine and whether its worker is there to do it."""
    found = health.look_sync(backend, max_age=selectors.SHOWN_HEALTH_SECONDS)
    return {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.model._meta,
        "backend": backend,
        "current": found.served,
        "probe": found,
        "switch": selectors.active_switch(backend.name),
        "engine": backend.engine.kind,
        "worker_alive": selectors.worker_alive(backend.name),
        "worker_missing": selectors.worker_missing(backend.name),
        "back_url": back_url,
    }


def _switch_requested(request: HttpRequest, backend: BackendSpec, message: str) -> HttpResponse:
    """After a switch or restart was asked for: say so (and that no worker would do it,
    if none is alive), and show the switch history, where its phase is followed."""
    messages.success(request, message)
    if not selectors.worker_alive(backend.name):
        messages.warning(request, selectors.worker_missing(backend.name))
    return redirect("admin:modelmgr_modelswitch_changelist")


# --- the dashboard -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendRow:
    name: str
    base_url: str
    probe: BackendHealth
    queue: dict[str, float] | None
    switch: ModelSwitch | None
    switch_phase: SafeString  # the switch's phase, kept live on the page
    worker_alive: bool
    engine: str
    admission: dict[str, Any] | None  # this process's queue: capacity, running, waiting


def backends_overview(specs: list[BackendSpec]) -> list[BackendRow]:
    """Every backend as the dashboard shows it: health, models, queue, a switch, its
    worker. Stale records are looked at in parallel, so a dead backend costs one
    timeout, and each backend is looked at once per page."""
    found = health.look_all_sync(specs, max_age=selectors.SHOWN_HEALTH_SECONDS)
    rows = []
    for spec, record in zip(specs, found, strict=True):
        switch = selectors.active_switch(spec.name)
        phase = (
            live_switch_field(switch, "phase", format_html("<strong>{}</strong>", switch.phase))
            if switch
            else SafeString("")
        )
        rows.append(
            BackendRow(
                name=spec.name,
                base_url=spec.base_url,
                probe=record,
                queue=record.queue,
                switch=switch,
                switch_phase=phase,
                worker_alive=selectors.worker_alive(spec.name),
                engine=spec.engine.kind,
                admission=_admission_of(spec.name),
            )
        )
    return rows


def _switch_card(switch: ModelSwitch | None) -> dict[str, SafeString]:
    """The dashboard card's live cells; empty ones (no switch yet) for the poller to fill
    once a switch is requested."""
    if switch is None:
        return {
            name: format_html('<span data-tt-switch="" data-tt-switch-field="{}"></span>', name)
            for name in ("transition", "phase", "since", "duration_label", "error_preview")
        }
    return {
        "transition": live_switch_field(switch, "transition", switch_transition(switch)),
        "phase": live_switch_field(
            switch, "phase", format_html("<strong>{}</strong>", switch.phase)
        ),
        "since": live_switch_field(switch, "since", switch_since(switch)),
        "duration_label": live_switch_field(
            switch, "duration_label", switch_duration_label(switch)
        ),
        "error_preview": live_switch_field(switch, "error_preview", error_preview(switch.error)),
    }


def _admission_of(backend: str) -> dict[str, Any] | None:
    """The admission queue of `backend` in this process, once it has routed to it."""
    replica = pool.replicas.get(backend)
    return replica.queue.figures() if replica is not None else None


def dashboard_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    specs = backend_specs() or [default_spec()]
    rows = backends_overview(specs)
    first = rows[0]
    job = selectors.download_get()
    switch = selectors.latest_switch()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "TalkTuah dashboard",
        "probe": first.probe,
        "served_model": first.probe.served,
        "queue": first.queue,
        "job": job,
        "job_bar": progress_bar(job) if job else None,
        "job_speed": live_field(job, "speed_label", job_speed(job)) if job else "",
        "job_error": live_field(job, "error_preview", error_preview(job.error), job.error)
        if job
        else "",
        "job_status": live_field(job, "status", job.status) if job else "",
        "switch": switch,
        "switch_fields": _switch_card(switch),
        "switch_cause": switch_cause_link(switch) if switch else "",
        "switch_requested_by": requested_by_link(switch.requested_by) if switch else "",
        "worker_alive": first.worker_alive,
        "worker_missing": selectors.worker_missing(first.name),
        "engine": first.engine,
        "backends": rows,
    }
    return TemplateResponse(request, "admin/modelmgr/dashboard.html", context)

"""The admin pages of the model lifecycle that are more than a model list: the download
form, the progress JSON the list's poller reads, the downloaded models with "serve this
model" and its confirm page, and the TalkTuah dashboard.

Each page reads or changes state only through modelmgr.lifecycle, the services the API
and the worker call too; a refused request (LifecycleError) becomes an admin message.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from modelmgr import selectors, services
from modelmgr.models import DownloadJob, DownloadStatus, ModelSwitch
from plumbing import vllm
from plumbing.errors import TalkTuahError

WORKER_MISSING = "No worker is running: start one with `python manage.py run_worker`"
# The poller asks for the active jobs of one page; more than a page never makes sense.
MAX_POLLED_JOBS = 200
ERROR_PREVIEW_CHARS = 80
# Switch history rows are never added by hand (the admin refuses it), so the add
# permission of ModelSwitch is free to mean "may ask for a switch".
SWITCH_PERMISSION = "modelmgr.add_modelswitch"


def admin_actor(request: HttpRequest) -> str:
    """Who the lifecycle records as having asked, for requests made in the admin."""
    return f"admin:{request.user.get_username()}"


def human_size(size_bytes: int) -> str:
    return str(filesizeformat(size_bytes))


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


# --- the download form -----------------------------------------------------------------


class DownloadForm(forms.Form):
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
        help_text="Switch vLLM to this model as soon as the download succeeds.",
    )


def download_add_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    form = DownloadForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            job, created = services.download_start(
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
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Download a model from the Hub",
        "opts": opts,
        "form": form,
        "worker_alive": selectors.worker_alive(),
        "worker_missing": WORKER_MISSING,
    }
    return TemplateResponse(request, "admin/modelmgr/downloadjob/download_form.html", context)


# --- downloaded models and switching -----------------------------------------------------


def downloaded_models_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    probe = vllm.probe()
    serve_url = reverse("admin:modelmgr_servedmodel_serve")
    rows = [
        {
            "model": model,
            "size": human_size(model.size_bytes),
            "serving": model.repo_id in probe.models,
            "serve_url": f"{serve_url}?{urlencode({'model': model.repo_id})}",
        }
        for model in selectors.downloaded_models()
    ]
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Downloaded models",
        "opts": model_admin.model._meta,
        "rows": rows,
        "probe": probe,
        "switch": selectors.active_switch(),
        "can_switch": request.user.has_perm(SWITCH_PERMISSION),
        "engine": settings.TALKTUAH_ENGINE,
    }
    return TemplateResponse(request, "admin/modelmgr/servedmodel/downloaded_models.html", context)


def serve_confirm_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what serving the model will do. POST: ask the worker to switch."""
    if not request.user.has_perm(SWITCH_PERMISSION):
        raise PermissionDenied
    models_url = reverse("admin:modelmgr_servedmodel_changelist")
    if request.method == "POST":
        try:
            switch = services.model_switch_request(
                repo_id=request.POST.get("model", ""), requested_by=admin_actor(request)
            )
        except TalkTuahError as exc:
            messages.error(request, exc.message)
            return redirect(models_url)
        messages.success(
            request,
            f"Switch requested: {switch.from_model or 'nothing'} → {switch.to_model}. "
            "vLLM restarts; follow the phase below.",
        )
        if not selectors.worker_alive():
            messages.warning(request, WORKER_MISSING)
        return redirect("admin:modelmgr_modelswitch_changelist")

    repo_id = request.GET.get("model", "").strip()
    target = next((m for m in selectors.downloaded_models() if m.repo_id == repo_id), None)
    if target is None:
        messages.error(request, f"'{repo_id}' is not downloaded: download it first.")
        return redirect(models_url)
    probe = vllm.probe()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Serve {target.repo_id}?",
        "opts": model_admin.model._meta,
        "target": target,
        "size": human_size(target.size_bytes),
        "current": probe.models[0] if probe.models else None,
        "probe": probe,
        "switch": selectors.active_switch(),
        "wait_seconds": settings.SWITCH_WAIT_SECONDS,
        "timeout_seconds": settings.SWITCH_TIMEOUT_SECONDS,
        "engine": settings.TALKTUAH_ENGINE,
        "worker_alive": selectors.worker_alive(),
        "worker_missing": WORKER_MISSING,
    }
    return TemplateResponse(request, "admin/modelmgr/servedmodel/serve_confirm.html", context)


# --- the dashboard -------------------------------------------------------------------------


def queue_figures() -> dict[str, Any] | None:
    """vLLM's queue (waiting / running requests, KV-cache usage) for the dashboard, from
    its /metrics; None when vLLM does not answer. The template shows every key."""
    return vllm.queue_figures(vllm.metrics_text_sync())


@dataclass(frozen=True, slots=True)
class BackendRow:
    name: str
    base_url: str
    probe: vllm.Probe
    queue: dict[str, float] | None
    switch: ModelSwitch | None
    worker_alive: bool
    engine: str


def backends_overview() -> list[BackendRow]:
    """Every backend as the dashboard shows it: health, models, queue, a switch, its
    worker. The backends are looked at in parallel, so a dead one costs one timeout."""
    names = selectors.backend_names()
    upstreams = [selectors.backend_upstream(name) for name in names]

    def look(upstream: vllm.Upstream) -> tuple[vllm.Probe, dict[str, float] | None]:
        return vllm.probe(upstream=upstream), vllm.queue_figures(
            vllm.metrics_text_sync(upstream=upstream)
        )

    with ThreadPoolExecutor(max_workers=max(len(upstreams), 1)) as pool:
        looks = list(pool.map(look, upstreams))
    return [
        BackendRow(
            name=name,
            base_url=upstream.base_url,
            probe=probe,
            queue=queue,
            switch=selectors.active_switch(name),
            worker_alive=selectors.worker_alive(name),
            engine=selectors.backend_engine(name),
        )
        for name, upstream, (probe, queue) in zip(names, upstreams, looks, strict=True)
    ]


def dashboard_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    probe = vllm.probe()
    job = selectors.download_get()
    switch = selectors.active_switch() or ModelSwitch.objects.order_by("-created_at").first()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "TalkTuah dashboard",
        "probe": probe,
        "served_model": probe.models[0] if probe.models else None,
        "queue": queue_figures(),
        "job": job,
        "job_bar": progress_bar(job) if job else None,
        "job_speed": live_field(job, "speed_label", job_speed(job)) if job else "",
        "job_error": live_field(job, "error_preview", error_preview(job.error), job.error)
        if job
        else "",
        "job_status": live_field(job, "status", job.status) if job else "",
        "switch": switch,
        "worker_alive": selectors.worker_alive(),
        "worker_missing": WORKER_MISSING,
        "engine": settings.TALKTUAH_ENGINE,
        "backends": backends_overview(),
    }
    return TemplateResponse(request, "admin/modelmgr/dashboard.html", context)

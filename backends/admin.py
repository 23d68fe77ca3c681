"""The Backends page of the admin: the vLLM servers the gateway routes to. A vLLM API
key typed here is sealed before it is stored (`backends.services.backend_save`) and
never shown again. The backend VLLM_BASE_URL describes (`default`, when no row takes
its name) is listed above the rows, read-only."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from backends.discovery import backend_specs, row_specs
from backends.models import Backend
from backends.services import backend_save


def restart_link(name: str) -> str:
    """A link to the engine restart's confirm page (modelmgr's admin: the lifecycle)."""
    url = reverse("admin:talktuah_restart_engine", args=[name])
    return format_html('<a class="button" href="{}">Restart engine…</a>', url)


class BackendForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="vLLM's --api-key, if it has one. Stored sealed under SECRET_KEY and "
        "never shown again; leave empty to keep the current one.",
    )
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored API key")

    class Meta:
        model = Backend
        fields = [
            "name",
            "base_url",
            "api_key",
            "clear_api_key",
            "engine",
            "engine_settings",
            "weight",
            "capacity",
            "priority_scheduling",
            "enabled",
            "draining",
        ]


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    """The vLLM servers the gateway routes to. Routing picks up a change within
    BACKEND_POLL_SECONDS; each backend's models come from its own /v1/models."""

    form = BackendForm
    list_display = [
        "name",
        "base_url",
        "engine",
        "weight",
        "capacity",
        "enabled",
        "draining",
        "api_key_set",
        "restart",
    ]
    list_editable = ["weight", "enabled", "draining"]
    search_fields = ["name", "base_url"]
    list_display_links = ["name"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The backends routed to that no enabled row describes: discovery's `default`.
        rows = {spec.name for spec in row_specs()}
        from_settings = [spec for spec in backend_specs() if spec.name not in rows]
        return super().changelist_view(
            request, {**(extra_context or {}), "settings_backends": from_settings}
        )

    @admin.display(description="Engine")
    def restart(self, obj: Backend) -> str:
        # The restart itself is the lifecycle's (modelmgr's admin view, as POST
        # /api/restart-engine): this page only links to it.
        return restart_link(obj.name) if obj.engine != "external" else "external"

    @admin.display(boolean=True, description="API key")
    def api_key_set(self, obj: Backend) -> bool:
        return obj.has_api_key

    def save_model(self, request: HttpRequest, obj: Backend, form: Any, change: bool) -> None:
        data = form.cleaned_data
        api_key = "" if data.get("clear_api_key") else (data.get("api_key") or None)
        backend_save(obj, api_key=api_key)

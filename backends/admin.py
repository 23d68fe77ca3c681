"""The Backends page of the admin: the vLLM servers the gateway routes to. A vLLM API
key typed here is sealed before it is stored (`backends.services.backend_save`) and
never shown again."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from backends.models import Backend
from backends.services import backend_save


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
    ]
    list_editable = ["weight", "enabled", "draining"]
    search_fields = ["name", "base_url"]

    @admin.display(boolean=True, description="API key")
    def api_key_set(self, obj: Backend) -> bool:
        return obj.has_api_key

    def save_model(self, request: HttpRequest, obj: Backend, form: Any, change: bool) -> None:
        data = form.cleaned_data
        api_key = "" if data.get("clear_api_key") else (data.get("api_key") or None)
        backend_save(obj, api_key=api_key)

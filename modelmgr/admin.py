"""The Django admin for keys and usage. A new key's plaintext is shown exactly once,
in the message after saving; only its digest is stored."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from modelmgr.models import ApiKey, Scope, UsageDaily
from modelmgr.services import api_key_revoke


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
            "is_active",
            "expires_at",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_models"] = ", ".join(self.instance.allowed_models)

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
        plaintext, _prefix = ApiKey.generate()
        obj.set_key(plaintext)
        super().save_model(request, obj, form, change)
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

"""The admin's login form, throttled against password guessing: after
ADMIN_LOGIN_FAILURES_PER_MINUTE failed logins from one client address, or for one
username, within a minute's window, further attempts are refused without checking the
password until the window ends. django-ratelimit counts them in the cache (Redis in
production), so every process and instance shares them; the admin is synchronous
Django, which is what django-ratelimit is built for (the proxy's async request path
counts with plumbing/counters.py instead).

The client address is REMOTE_ADDR, which uvicorn takes from X-Forwarded-For only when the
request came from a proxy in FORWARDED_ALLOW_IPS; behind another proxy every client shares
that proxy's address, and the per-username count still holds.
"""

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django_ratelimit.core import get_usage


def _failures(request: HttpRequest, username: str, *, add: bool) -> list[int]:
    """Failed logins in this window from the request's address and for `username`,
    counting one more first when `add`."""
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    rate = f"{settings.ADMIN_LOGIN_FAILURES_PER_MINUTE}/m"
    usages: list[dict[str, Any] | None] = [
        get_usage(request, group="admin-login.ip", key="ip", rate=rate, increment=add),
        get_usage(
            request, group="admin-login.user", key=lambda _g, _r: user, rate=rate, increment=add
        ),
    ]
    return [usage["count"] for usage in usages if usage]


def login_refused(request: HttpRequest, username: str) -> bool:
    limit = settings.ADMIN_LOGIN_FAILURES_PER_MINUTE
    return any(count >= limit for count in _failures(request, username, add=False))


def login_failed(request: HttpRequest, username: str) -> None:
    _failures(request, username, add=True)


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed logins. Wait a minute, then try again.",
    }

    def clean(self) -> dict[str, object]:
        username = str(self.cleaned_data.get("username") or "")
        if self.request is not None and login_refused(self.request, username):
            raise ValidationError(self.error_messages["throttled"], code="throttled")
        try:
            return super().clean()
        except ValidationError:
            if self.request is not None:
                login_failed(self.request, username)
            raise

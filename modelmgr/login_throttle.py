"""The admin's login form, throttled against password guessing: after
ADMIN_LOGIN_FAILURES_PER_MINUTE failed logins from one client address, or for one
username, further attempts are refused without checking the password until a minute after
the first of those failures. Counts live in the cache (Redis in production), so every
process and instance shares them.

The client address is REMOTE_ADDR, which uvicorn takes from X-Forwarded-For only when the
request came from a proxy in FORWARDED_ALLOW_IPS; behind another proxy every client shares
that proxy's address, and the per-username count still holds.
"""

import hashlib

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError

WINDOW_SECONDS = 60


def _counters(address: str, username: str) -> list[str]:
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [f"admin-login:ip:{address}", f"admin-login:user:{user}"]


def login_refused(address: str, username: str) -> bool:
    counts = cache.get_many(_counters(address, username))
    return any(count >= settings.ADMIN_LOGIN_FAILURES_PER_MINUTE for count in counts.values())


def login_failed(address: str, username: str) -> None:
    for counter in _counters(address, username):
        # The first failure opens a minute's window (add() sets the expiry; incr() keeps
        # it, atomically on Redis); the count goes with it.
        cache.add(counter, 0, timeout=WINDOW_SECONDS)
        try:
            cache.incr(counter)
        except ValueError:  # expired between the two calls
            cache.add(counter, 1, timeout=WINDOW_SECONDS)


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed logins. Wait a minute, then try again.",
    }

    def clean(self) -> dict[str, object]:
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        username = str(self.cleaned_data.get("username") or "")
        if login_refused(address, username):
            raise ValidationError(self.error_messages["throttled"], code="throttled")
        try:
            return super().clean()
        except ValidationError:
            login_failed(address, username)
            raise

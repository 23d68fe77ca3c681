"""The admin login, throttled against password guessing: a few failures a minute from
one address or for one username, then refusals that do not check the password."""

import hashlib
import time

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_ratelimit.core import _get_window

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


def away_from_window_edges(addresses: list[str], usernames: list[str]) -> None:
    """django-ratelimit's minute windows end at a fixed second per counted value: a test
    that crossed one would see its failures forgotten. Wait past any edge near enough."""
    users = [hashlib.sha256(name.encode()).hexdigest()[:32] for name in usernames]
    for _ in range(len(addresses) + len(users)):
        left = min(_get_window(value, 60) - time.time() for value in addresses + users)
        if left >= 3:
            return
        time.sleep(max(left, 0) + 1.2)


@pytest.fixture
def boss(settings):
    settings.ADMIN_LOGIN_FAILURES_PER_MINUTE = 3
    return User.objects.create_superuser("boss", "boss@example.com", "right-password-123")


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(response) -> bool:
    return response.status_code == 302 and response.url == "/admin/"


def test_it_refuses_the_right_password_after_too_many_wrong_ones(boss):
    away_from_window_edges(["10.0.0.1"], ["boss"])
    client = Client()
    for _ in range(3):
        assert b"correct username and password" in log_in(client, "boss", "guess").content
    refused = log_in(client, "boss", "right-password-123")
    assert not logged_in(refused)
    assert b"Too many failed logins" in refused.content


def test_it_counts_per_username_across_addresses(boss):
    away_from_window_edges(["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.2.1"], ["boss"])
    client = Client()
    for n in range(3):
        log_in(client, "boss", "guess", address=f"10.0.1.{n}")
    assert not logged_in(log_in(client, "boss", "right-password-123", address="10.0.2.1"))


def test_it_counts_per_address_across_usernames(boss):
    away_from_window_edges(["10.0.3.1"], ["someone0", "someone1", "someone2", "boss"])
    client = Client()
    for n in range(3):
        log_in(client, f"someone{n}", "guess", address="10.0.3.1")
    assert not logged_in(log_in(client, "boss", "right-password-123", address="10.0.3.1"))
    # Another address, same user: not refused.
    assert logged_in(log_in(Client(), "boss", "right-password-123", address="10.0.3.2"))


def test_it_lets_the_right_password_in_below_the_limit(boss):
    client = Client()
    for _ in range(2):
        log_in(client, "boss", "guess")
    assert logged_in(log_in(client, "boss", "right-password-123"))

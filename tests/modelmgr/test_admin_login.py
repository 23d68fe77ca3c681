"""The admin login, throttled against password guessing: a few failures a minute from
one address or for one username, then refusals that do not check the password."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def boss(settings):
    settings.ADMIN_LOGIN_FAILURES_PER_MINUTE = 3
    return User.objects.create_superuser("boss", "boss@example.com", "right-password-123")


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(response) -> bool:
    return response.status_code == 302 and response.url == "/admin/"


def test_it_refuses_the_right_password_after_too_many_wrong_ones(boss):
    client = Client()
    for _ in range(3):
        assert b"correct username and password" in log_in(client, "boss", "guess").content
    refused = log_in(client, "boss", "right-password-123")
    assert not logged_in(refused)
    assert b"Too many failed logins" in refused.content


def test_it_counts_per_username_across_addresses(boss):
    client = Client()
    for n in range(3):
        log_in(client, "boss", "guess", address=f"10.0.1.{n}")
    assert not logged_in(log_in(client, "boss", "right-password-123", address="10.0.2.1"))


def test_it_counts_per_address_across_usernames(boss):
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

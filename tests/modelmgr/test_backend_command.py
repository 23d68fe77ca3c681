"""`manage.py backend`: add, change, list and remove backends; bad input is a clear
error and no row."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from backends.discovery import row_specs
from backends.models import Backend

pytestmark = pytest.mark.django_db


def test_add_change_list_remove(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("GPU2_KEY", "k-123")
    call_command("backend", "add", "gpu-2", "http://gpu-2:8000/", "--api-key-env", "GPU2_KEY")
    row = Backend.objects.get(name="gpu-2")
    assert row.base_url == "http://gpu-2:8000" and "k-123" not in row.api_key_sealed
    assert [spec.upstream.api_key for spec in row_specs()] == ["k-123"]
    call_command("backend", "add", "gpu-2", "http://gpu-2:8001", "--weight", "3", "--draining")
    row.refresh_from_db()
    assert (row.base_url, row.weight, row.draining) == ("http://gpu-2:8001", 3, True)
    assert [spec.upstream.api_key for spec in row_specs()] == ["k-123"]  # kept
    call_command("backend", "list")
    out = capsys.readouterr().out
    assert "gpu-2\thttp://gpu-2:8001\tweight 3" in out and "API key set" in out
    assert "k-123" not in out
    call_command("backend", "remove", "gpu-2")
    assert not Backend.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "gpu-2:8000"], "http://host:port"),
        (["add", "x", "http://h:1", "--engine-settings", "[1]"], "JSON object"),
        (["add", "x", "http://h:1", "--engine-settings", "{"], "not JSON"),
        (["add", "x", "http://h:1", "--api-key-env", "NOT_SET_ANYWHERE"], "is not set"),
        (["add", "x", "http://h:1", "--weight", "0"], "at least 1"),
        (["remove", "nothing"], "no backend named"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("backend", *args)
    assert not Backend.objects.exists()

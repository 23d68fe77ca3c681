"""`python manage.py demo_setup`: the demo admin user and a demo API key for `make run`.

The key is kept in a git-ignored file (var/demo-key.txt) so a second run reuses it; a
new one is made when the file is missing or the key no longer works."""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from modelmgr.models import ApiKey, Scope, split_prefix
from modelmgr.services import api_key_create

DEMO_USER = "admin"
DEMO_PASSWORD = "admin"


def demo_key_file() -> Path:
    return Path(settings.VAR_DIR) / "demo-key.txt"


class Command(BaseCommand):
    help = "Create the demo admin user and API key if missing (for make run)."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        user = user_model.objects.filter(username=DEMO_USER).first()
        if user is None:
            user = user_model.objects.create_superuser(DEMO_USER, "", DEMO_PASSWORD)
            self.stdout.write(f"Demo admin user: {DEMO_USER} / {DEMO_PASSWORD}")
        path = demo_key_file()
        if path.exists():
            plaintext = path.read_text().strip()
            prefix = split_prefix(plaintext)
            key = ApiKey.objects.filter(prefix=prefix).first() if prefix else None
            if key is not None and key.matches(plaintext) and key.is_active:
                self.stdout.write(f"Reusing the demo API key in {path}")
                return
        _key, plaintext = api_key_create(
            name="demo", scopes=[Scope.INFERENCE, Scope.ADMIN], owner=user
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plaintext + "\n")
        path.chmod(0o600)
        self.stdout.write(f"Created a demo API key (kept in {path})")

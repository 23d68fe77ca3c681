"""`python manage.py backend add|list|remove ...`: the vLLM backends, from a shell (the
admin's Backends page does the same)."""

import json
import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.models import Backend, EngineKind
from backends.services import backend_create, backend_save


class Command(BaseCommand):
    help = "Add, change, list or remove the vLLM backends the gateway routes to."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        add = commands.add_parser("add", help="add a backend, or change one of that name")
        add.add_argument("name", help="a slug: used in ?backend=, metrics and logs")
        add.add_argument("base_url", help="vLLM's address without /v1, e.g. http://gpu-2:8000")
        add.add_argument("--weight", type=int, default=1, help="share among replicas")
        add.add_argument("--engine", choices=EngineKind.values, default=EngineKind.EXTERNAL)
        add.add_argument(
            "--engine-settings", default="{}", help="JSON, e.g. '{\"VLLM_PORT\": 8002}'"
        )
        add.add_argument(
            "--api-key-env",
            metavar="VARIABLE",
            help="read vLLM's --api-key from this environment variable (never from the "
            "command line, which shells keep in their history)",
        )
        add.add_argument(
            "--capacity",
            type=int,
            help="requests it runs at once; beyond, they wait in the gateway "
            "(default: BACKEND_CAPACITY)",
        )
        add.add_argument(
            "--priority-scheduling",
            action="store_true",
            help="vLLM runs --scheduling-policy priority: set `priority` from the key's tier",
        )
        add.add_argument("--disabled", action="store_true", help="add it switched off")
        add.add_argument("--draining", action="store_true", help="take no new requests")
        commands.add_parser("list", help="one line per backend")
        remove = commands.add_parser("remove", help="delete a backend")
        remove.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            for row in Backend.objects.order_by("name"):
                state = "enabled" if row.enabled else "disabled"
                extra = ", draining" if row.draining else ""
                key = ", API key set" if row.has_api_key else ""
                capacity = f"capacity {row.capacity}" if row.capacity else "capacity default"
                self.stdout.write(
                    f"{row.name}\t{row.base_url}\tweight {row.weight}\t{capacity}\t"
                    f"{row.engine}\t{state}{extra}{key}"
                )
            return
        if action == "remove":
            deleted, _ = Backend.objects.filter(name=options["name"]).delete()
            if not deleted:
                raise CommandError(f"There is no backend named '{options['name']}'.")
            self.stderr.write(f"Removed backend {options['name']}. {_when_seen()}")
            return
        self._add(options)

    def _add(self, options: dict[str, Any]) -> None:
        try:
            engine_settings = json.loads(options["engine_settings"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--engine-settings is not JSON: {exc}") from exc
        if not isinstance(engine_settings, dict):
            raise CommandError("--engine-settings must be a JSON object")
        if options["weight"] < 1:
            raise CommandError("--weight must be at least 1")
        if options["capacity"] is not None and options["capacity"] < 1:
            raise CommandError("--capacity must be at least 1")
        api_key = None
        if options["api_key_env"]:
            api_key = os.environ.get(options["api_key_env"])
            if api_key is None:
                raise CommandError(f"${options['api_key_env']} is not set")
        fields = {
            "base_url": options["base_url"],
            "engine": options["engine"],
            "engine_settings": engine_settings,
            "weight": options["weight"],
            "capacity": options["capacity"],
            "priority_scheduling": options["priority_scheduling"],
            "enabled": not options["disabled"],
            "draining": options["draining"],
        }
        try:
            row = Backend.objects.filter(name=options["name"]).first()
            if row is None:
                row = backend_create(name=options["name"], api_key=api_key or "", **fields)
                verb = "Added"
            else:
                for field, value in fields.items():
                    setattr(row, field, value)
                backend_save(row, api_key=api_key)
                verb = "Changed"
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(problems) from exc
        self.stderr.write(f"{verb} backend {row.name} at {row.base_url}. {_when_seen()}")


def _when_seen() -> str:
    """When a running gateway (another process) sees the change."""
    if settings.REDIS_URL:
        return f"Running gateways see it within {settings.BACKEND_POLL_SECONDS:g} s."
    return (
        f"Running gateways see it within {settings.BACKEND_ROWS_SECONDS:g} s "
        f"(within {settings.BACKEND_POLL_SECONDS:g} s with REDIS_URL)."
    )

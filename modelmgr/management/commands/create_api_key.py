"""`python manage.py create_api_key --name N [--scope admin] ...`: prints a new key once."""

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from modelmgr.models import Scope, Tier
from modelmgr.services import api_key_create
from teams.models import Team
from teams.services import api_key_quota_set, api_key_team_set


class Command(BaseCommand):
    help = "Create an API key and print it (once: only its digest is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="who or what uses the key")
        parser.add_argument(
            "--scope",
            action="append",
            choices=Scope.values,
            help="inference (default) or admin; admin keys also get inference; repeatable",
        )
        parser.add_argument(
            "--model", action="append", default=[], help="allowed model (repeatable); none = all"
        )
        parser.add_argument("--rpm", type=int, help="requests per minute (default: the setting)")
        parser.add_argument("--tpm", type=int, help="tokens per minute (default: the setting)")
        parser.add_argument("--expires-days", type=int, help="expire after this many days")
        parser.add_argument(
            "--tier",
            choices=Tier.values,
            default=Tier.INTERACTIVE,
            help="when a backend is full, interactive requests leave its queue first",
        )
        parser.add_argument(
            "--share", type=int, default=1, help="share of a full backend (relative, >= 1)"
        )
        parser.add_argument(
            "--max-parallel",
            type=int,
            help="requests in flight at once (default: KEY_MAX_PARALLEL_REQUESTS)",
        )
        parser.add_argument(
            "--tokens-per-day",
            type=int,
            help="prompt + completion tokens per day (default: the team's for keys, else none)",
        )
        parser.add_argument(
            "--tokens-per-month",
            type=int,
            help="prompt + completion tokens per calendar month (default: the team's, else none)",
        )
        parser.add_argument("--team", help="the team (its name) whose quotas the key shares")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = set(options["scope"] or [Scope.INFERENCE])
        if Scope.ADMIN in scopes:
            scopes.add(Scope.INFERENCE)
        if options["share"] < 1:
            raise CommandError("--share must be at least 1")
        for limit in (
            "rpm",
            "tpm",
            "expires_days",
            "max_parallel",
            "tokens_per_day",
            "tokens_per_month",
        ):
            if options[limit] is not None and options[limit] < 0:
                raise CommandError(f"--{limit.replace('_', '-')} must not be negative")
        team = None
        if options["team"]:
            team = Team.objects.filter(name=options["team"]).first()
            if team is None:
                raise CommandError(f"no team named {options['team']!r} (manage.py team add)")
        expires_at = None
        if options["expires_days"] is not None:
            expires_at = timezone.now() + timedelta(days=options["expires_days"])
        key, plaintext = api_key_create(
            name=options["name"],
            scopes=scopes,
            allowed_models=options["model"],
            rpm_limit=options["rpm"],
            tpm_limit=options["tpm"],
            expires_at=expires_at,
            tier=options["tier"],
            share=options["share"],
            max_parallel_requests=options["max_parallel"],
        )
        if team is not None:
            api_key_team_set(key=key, team=team)
        if options["tokens_per_day"] is not None or options["tokens_per_month"] is not None:
            api_key_quota_set(
                key=key,
                tokens_per_day=options["tokens_per_day"],
                tokens_per_month=options["tokens_per_month"],
            )
        self.stderr.write(
            f"Created key {key.prefix} for {key.name!r} with scopes {', '.join(key.scopes)}. "
            "Copy it now; it will not be shown again:"
        )
        self.stdout.write(plaintext)

"""`python manage.py team add|list|set`: teams and their token quotas from a terminal.

manage.py team add research --tokens-per-day 2000000 --key-tokens-per-day 200000
manage.py team set research --tokens-per-month none --add-key tt-1a2b3c4d
manage.py team list
"""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelmgr.models import ApiKey
from teams import selectors, services
from teams.models import Team

argparse_unset = object()  # an option not given (None means "no quota")
QUOTAS = ("tokens_per_day", "tokens_per_month", "key_tokens_per_day", "key_tokens_per_month")


def quota_value(text: str) -> int | None:
    """A quota on the command line: a whole number of tokens, or `none` for no quota."""
    if text.lower() in ("none", "-"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"a quota is a number of tokens or 'none', got {text!r}") from None
    if value < 0:
        raise CommandError("a quota must not be negative")
    return value


def _quota_options(parser: CommandParser) -> None:
    for name in QUOTAS:
        what = "each member key's" if name.startswith("key_") else "the whole team's"
        period = "day" if name.endswith("day") else "calendar month"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=quota_value,
            default=argparse_unset,
            help=f"{what} prompt + completion tokens per {period} ('none': no quota)",
        )


class Command(BaseCommand):
    help = "Create, list and change teams and their token quotas."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="create a team")
        add.add_argument("name")
        add.add_argument("--description", default="")
        _quota_options(add)
        actions.add_parser("list", help="the teams, their quotas, keys and usage")
        change = actions.add_parser("set", help="change a team's quotas or members")
        change.add_argument("name")
        change.add_argument("--rename", help="a new name")
        change.add_argument("--description")
        _quota_options(change)
        change.add_argument(
            "--add-key", action="append", default=[], metavar="PREFIX", help="a key to add"
        )
        change.add_argument(
            "--remove-key",
            action="append",
            default=[],
            metavar="PREFIX",
            help="a key to take out of the team",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        given = {
            name: options[name]
            for name in QUOTAS
            if options.get(name, argparse_unset) is not argparse_unset
        }
        try:
            if options["action"] == "add":
                team = services.team_create(
                    name=options["name"], description=options["description"], **given
                )
                self.stdout.write(f"Created team {team.name!r}.")
            elif options["action"] == "set":
                self._set(options, given)
            else:
                self._list()
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _set(self, options: dict[str, Any], given: dict[str, int | None]) -> None:
        team = Team.objects.filter(name=options["name"]).first()
        if team is None:
            raise CommandError(f"no team named {options['name']!r}")
        changes: dict[str, Any] = dict(given)
        if options["rename"]:
            changes["name"] = options["rename"]
        if options["description"] is not None:
            changes["description"] = options["description"]
        if changes:
            services.team_update(team=team, **changes)
        for prefix, into in [(p, team) for p in options["add_key"]] + [
            (p, None) for p in options["remove_key"]
        ]:
            key = ApiKey.objects.filter(prefix=prefix).first()
            if key is None:
                raise CommandError(f"no key with prefix {prefix!r}")
            if into is None and key.team_id != team.pk:
                raise CommandError(f"key {prefix} is not in team {team.name!r}")
            services.api_key_team_set(key=key, team=into)
        self.stdout.write(f"Updated team {team.name!r}.")

    def _list(self) -> None:
        def shown(value: int | None) -> str:
            return "-" if value is None else str(value)

        teams = list(Team.objects.order_by("name"))
        if not teams:
            self.stdout.write("No teams yet: manage.py team add NAME")
            return
        self.stdout.write(
            f"{'team':<20} {'per day':>12} {'per month':>12} {'key/day':>10} {'key/month':>10} "
            f"{'today':>10} {'this month':>12}  keys"
        )
        for team in teams:
            keys = ", ".join(team.keys.order_by("name").values_list("prefix", flat=True))
            self.stdout.write(
                f"{team.name:<20} {shown(team.tokens_per_day):>12} "
                f"{shown(team.tokens_per_month):>12} {shown(team.key_tokens_per_day):>10} "
                f"{shown(team.key_tokens_per_month):>10} "
                f"{selectors.team_tokens(team=team, period='day'):>10} "
                f"{selectors.team_tokens(team=team, period='month'):>12}  {keys or '-'}"
            )

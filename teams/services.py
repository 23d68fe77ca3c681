"""Team workflows (the admin, `manage.py team` and `manage.py create_api_key` call these):
create and change a team, put a key in a team or take it out, set a key's own quotas.
A change reaches the request path within API_KEY_CACHE_SECONDS (the key cache)."""

from modelmgr.models import ApiKey
from teams.models import TEAM_FIELDS, Team


def _check(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative")


def team_create(
    *,
    name: str,
    description: str = "",
    tokens_per_day: int | None = None,
    tokens_per_month: int | None = None,
    key_tokens_per_day: int | None = None,
    key_tokens_per_month: int | None = None,
) -> Team:
    name = name.strip()
    if not name:
        raise ValueError("a team needs a name")
    _check(
        tokens_per_day=tokens_per_day,
        tokens_per_month=tokens_per_month,
        key_tokens_per_day=key_tokens_per_day,
        key_tokens_per_month=key_tokens_per_month,
    )
    if Team.objects.filter(name=name).exists():
        raise ValueError(f"a team named {name!r} exists already")
    return Team.objects.create(
        name=name,
        description=description,
        tokens_per_day=tokens_per_day,
        tokens_per_month=tokens_per_month,
        key_tokens_per_day=key_tokens_per_day,
        key_tokens_per_month=key_tokens_per_month,
    )


def team_update(*, team: Team, **changes: int | str | None) -> Team:
    """Change some of a team's fields (name, description and the four quotas)."""
    unknown = set(changes) - set(TEAM_FIELDS)
    if unknown:
        raise ValueError(f"unknown team field(s): {', '.join(sorted(unknown))}")
    _check(**{k: v for k, v in changes.items() if k not in ("name", "description")})  # type: ignore[arg-type]
    for field, value in changes.items():
        setattr(team, field, value)
    team.full_clean()
    team.save()
    return team


def api_key_team_set(*, key: ApiKey, team: Team | None) -> None:
    """Put a key in a team (None: in none)."""
    key.team = team
    key.save(update_fields=["team"])


def api_key_quota_set(
    *, key: ApiKey, tokens_per_day: int | None, tokens_per_month: int | None
) -> None:
    """A key's own quotas (None: its team's default for keys, else none)."""
    _check(tokens_per_day=tokens_per_day, tokens_per_month=tokens_per_month)
    key.tokens_per_day, key.tokens_per_month = tokens_per_day, tokens_per_month
    key.save(update_fields=["tokens_per_day", "tokens_per_month"])

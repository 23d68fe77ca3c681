"""A key's token quotas as the request path carries them (on modelmgr.auth.Principal):
one small frozen object, read once when the key is looked up, so checking a quota never
touches the database."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelmgr.models import ApiKey


@dataclass(frozen=True, slots=True)
class TokenQuota:
    """Prompt + completion tokens per calendar day and month, for the key itself (its
    own, else its team's default for keys) and for its team (shared by the team's keys).
    None: no quota of that kind."""

    key_per_day: int | None = None
    key_per_month: int | None = None
    team_id: int | None = None
    team_name: str = ""
    team_per_day: int | None = None
    team_per_month: int | None = None

    @property
    def limited(self) -> bool:
        # Asked twice by every request (reserve, settle): no generator.
        return not (
            self.key_per_day is None
            and self.key_per_month is None
            and self.team_per_day is None
            and self.team_per_month is None
        )

    @classmethod
    def of(cls, key: "ApiKey") -> "TokenQuota":
        """A key's quotas; its team must be loaded with it (select_related)."""
        team = key.team
        if team is None:
            return cls(key_per_day=key.tokens_per_day, key_per_month=key.tokens_per_month)
        return cls(
            key_per_day=_first(key.tokens_per_day, team.key_tokens_per_day),
            key_per_month=_first(key.tokens_per_month, team.key_tokens_per_month),
            team_id=team.pk,
            team_name=team.name,
            team_per_day=team.tokens_per_day,
            team_per_month=team.tokens_per_month,
        )


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


NO_QUOTA = TokenQuota()

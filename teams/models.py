"""Teams: a group of API keys with token quotas of its own (shared by its keys) and
default quotas for each of its keys. A key belongs to at most one team (ApiKey.team);
its own quotas apply on top of the team's."""

from django.db import models

# The fields of a team that an operator sets (the admin's form, services.team_update).
TEAM_FIELDS = (
    "name",
    "description",
    "tokens_per_day",
    "tokens_per_month",
    "key_tokens_per_day",
    "key_tokens_per_month",
)


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    # The team's own quotas: the tokens all its keys together may use.
    tokens_per_day = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens all the team's keys may use per day; "
        "empty = no team quota.",
    )
    tokens_per_month = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens all the team's keys may use per calendar "
        "month; empty = no team quota.",
    )
    # Defaults for each member key that sets no quota of its own.
    key_tokens_per_day = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Each member key's daily quota, unless the key sets its own.",
    )
    key_tokens_per_month = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Each member key's monthly quota, unless the key sets its own.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

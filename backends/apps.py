import logging

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save

log = logging.getLogger("talktuah.backends")

# The version (plumbing/counters.py) that moves on whenever a Backend row changes: each
# process's pool re-reads the rows when it moved, instead of at every poll.
ROWS_VERSION = "backends"


class BackendsConfig(AppConfig):
    name = "backends"
    verbose_name = "Backends"

    def ready(self) -> None:
        from backends.models import Backend

        post_save.connect(_rows_changed, sender=Backend, dispatch_uid="backends-rows-saved")
        post_delete.connect(_rows_changed, sender=Backend, dispatch_uid="backends-rows-deleted")


def _rows_changed(**_: object) -> None:
    # After the commit, so that a process seeing the new version reads the new rows.
    transaction.on_commit(_bump_rows_version)


def _bump_rows_version() -> None:
    from plumbing import counters

    try:
        counters.bump_version(ROWS_VERSION)
    except counters.CountsUnavailable as exc:
        # The change is saved; other processes see it at their next periodic re-read.
        log.warning(
            "a backend changed but Redis did not take the news (%s): other processes "
            "route to it within BACKEND_ROWS_SECONDS",
            exc,
        )

"""`python manage.py worker_alive`: exit 0 when a worker's heartbeat is fresh, else 1
(the worker container's health check)."""

import sys
from typing import Any

from django.core.management.base import BaseCommand

from modelmgr.selectors import worker_alive


class Command(BaseCommand):
    help = "Exit 0 when a worker wrote its heartbeat recently (for health checks)."

    def handle(self, *args: Any, **options: Any) -> None:
        if worker_alive():
            self.stdout.write("worker alive")
            return
        self.stderr.write("no worker heartbeat within WORKER_STALE_SECONDS")
        sys.exit(1)

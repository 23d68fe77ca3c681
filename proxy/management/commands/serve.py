"""`python manage.py serve --workers N`: the production entry point. Runs uvicorn with
N worker processes; with more than one, Prometheus metrics go through a multiprocess
folder (PROMETHEUS_MULTIPROC_DIR, default var/prometheus) that is emptied first, so a
scrape sums every worker and never counts a previous run."""

import json
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the gateway under uvicorn (several workers, multiprocess metrics)."
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.getenv("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.getenv("PORT", "8000")))
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.getenv("WEB_CONCURRENCY", "1")),
            help="uvicorn worker processes (default: WEB_CONCURRENCY or 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers = max(options["workers"], 1)
        multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if workers > 1 and not multiproc:
            multiproc = str(Path(settings.VAR_DIR) / "prometheus")
        if multiproc:
            # Left-over files of a previous run would be summed into this one's counts.
            shutil.rmtree(multiproc, ignore_errors=True)
            Path(multiproc).mkdir(parents=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc
        # Each client connection is a file descriptor: a soft limit of 1,024 (a common
        # default) would refuse connections long before memory runs out.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard and hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        uvicorn_options = {
            "app": "talktuah_site.asgi:application",
            "host": options["host"],
            "port": options["port"],
            "workers": workers,
            "access_log": False,
            "lifespan": "on",
            # What the shutdown grace (proxy/shutdown.py) did not end by then is cancelled.
            "timeout_graceful_shutdown": int(settings.SHUTDOWN_GRACE_SECONDS) + 5,
        }
        # Not uvicorn's CLI: it cannot take a protocol class (proxy/http.py's guards).
        command = [sys.executable, "-m", "proxy.http", json.dumps(uvicorn_options)]
        self.stdout.write(
            f"serving on http://{options['host']}:{options['port']} with {workers} worker(s)"
        )
        self.stdout.flush()
        # Each worker admits its part of a backend's capacity (backends/admission.py).
        os.environ["WEB_CONCURRENCY"] = str(workers)
        os.execv(sys.executable, command)

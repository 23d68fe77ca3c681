"""`python manage.py run_worker [--backend NAME]`: runs downloads and model switches.

One worker per GPU host: `--backend NAME` (default: `default`, VLLM_BASE_URL's) claims
only that backend's jobs, downloads into this host's Hugging Face cache, drives this
host's engine with the backend's engine settings (its spec: the worker holds it and
never writes to the settings), and reports the cache's models with its heartbeat (the
gateway cannot read another host's cache).

The database rows are the queue. The worker recovers what a dead worker left running,
starts the configured model (process engine, VLLM_MODEL), then loops: heartbeat, claim
a switch or restart (run in this thread), look at the engine (every
ENGINE_CHECK_SECONDS: its process, container or pods and vLLM's /health; a crash is
recorded in the switch history and in the heartbeat at once, and restarted under
ENGINE_RESTART_POLICY with backoff: `modelmgr.engines.supervisor`), claim a download
(run in a thread, so switches and the heartbeat go on during a long download).
SIGTERM/SIGINT stop it cleanly: a running download is put back in the queue, resumable.
"""

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connection
from django.utils import timezone

from backends import health
from backends.discovery import backend_get
from backends.models import DEFAULT_BACKEND
from backends.spec import BackendSpec
from modelmgr import engines, hub, selectors, services
from modelmgr.engines.supervisor import (
    CameBack,
    Crashed,
    Event,
    RestartDue,
    RestartPolicy,
    Supervisor,
)
from modelmgr.models import ModelSwitch, SwitchKind, SwitchPhase
from plumbing.errors import EngineError, TalkTuahError

logger = logging.getLogger("modelmgr.worker")


class Command(BaseCommand):
    help = "Run the background worker: Hub downloads and model switches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend", default=DEFAULT_BACKEND, help="the backend whose jobs to run"
        )
        parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
        parser.add_argument(
            "--downloads", type=int, default=1, help="downloads run at the same time"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stopping = threading.Event()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            # On its own host a backend's Hugging Face cache is this one: what it holds
            # is read from disk, not from a worker's report.
            backend = replace(backend_get(options["backend"]), local_cache=True)
        except TalkTuahError as exc:
            raise CommandError(exc.message) from exc
        # One engine for the worker's lifetime: the process engine then also knows the
        # exit code of the vLLM it started.
        engine = engines.engine_for(backend)
        name = services.worker_name()
        started_at = timezone.now()
        recovered = services.worker_recover()

        def beat(current: str) -> None:
            services.worker_beat(
                name=name,
                started_at=started_at,
                current=current,
                backend=backend,
                inventory=selectors.local_inventory(),
            )

        beat("starting")
        self.stdout.write(
            f"worker {name} started for backend {backend.name} at {backend.base_url} "
            f"(engine {backend.engine.kind}; recovered {recovered} job(s) left by "
            "stopped workers)"
        )
        self._start_configured_model(backend, engine)
        supervisor = None
        if not engine.read_only:
            supervisor = Supervisor(
                engine,
                RestartPolicy.from_settings(),
                probe=lambda: _probe(backend),
                start_grace=backend.engine.switch_timeout_seconds,
            )

        pool = ThreadPoolExecutor(max_workers=max(options["downloads"], 1))
        running: set[Future[None]] = set()
        last_beat = last_check = 0.0
        engine_note = ""  # what the heartbeat says of a crashed engine
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now - last_beat >= settings.WORKER_HEARTBEAT_SECONDS:
                    doing = f"{len(running)} download(s)" if running else "idle"
                    beat(f"{engine_note}; {doing}" if engine_note else doing)
                    last_beat = now
                switch = services.model_switch_claim(worker=name, backend=backend)
                if switch is not None:
                    beat(f"{switch.kind} to {switch.to_model}")
                    services.model_switch_run(switch=switch, backend=backend, engine=engine)
                    if supervisor is not None:
                        switch.refresh_from_db()
                        supervisor.after_run(
                            restart=switch.kind == SwitchKind.RESTART,
                            ready=switch.phase == SwitchPhase.READY,
                        )
                        engine_note = _down_note(supervisor, switch)
                        last_beat = 0.0  # say so now
                    continue
                if supervisor is not None and now - last_check >= settings.ENGINE_CHECK_SECONDS:
                    last_check = now
                    events = self._supervise(supervisor, backend, name)
                    if events:
                        # The heartbeat (the admin's worker list) says so at once.
                        engine_note = _event_note(events[-1])
                        beat(engine_note or "idle")
                        last_beat = time.monotonic()
                running = {f for f in running if not f.done()}
                if len(running) < options["downloads"]:
                    job = services.download_claim(worker=name, backend=backend)
                    if job is not None:
                        self.stdout.write(f"downloading {job.repo_id} (job {job.pk})")
                        running.add(pool.submit(self._download, job, backend))
                        continue
                self.stopping.wait(options["poll"])
        finally:
            pool.shutdown(wait=True)
            connection.close()
            self.stdout.write(f"worker {name} stopped")

    def _supervise(self, supervisor: Supervisor, backend: BackendSpec, name: str) -> list[Event]:
        """Look at the engine once; record what happened in the switch history."""
        watching = supervisor.watched is not None
        try:
            events = supervisor.check()
        except EngineError as exc:
            # Docker or the API server unreachable says nothing about vLLM itself.
            logger.warning("could not look at the engine: %s", exc)
            return []
        for event in events:
            if isinstance(event, Crashed):
                services.engine_crash_record(backend=backend, worker=name, crashed=event)
                self.stderr.write(f"vLLM crashed: {event.detail} ({event.reason})")
            elif isinstance(event, CameBack):
                services.engine_came_back_record(backend=backend, worker=name, came_back=event)
                self.stdout.write(f"vLLM runs again: {event.detail}")
            elif isinstance(event, RestartDue):
                try:
                    services.engine_restart_request(
                        backend=backend,
                        requested_by=f"{services.SUPERVISOR} (attempt {event.attempt})",
                        served_name=event.served_name,
                    )
                except TalkTuahError as exc:
                    # A switch queued meanwhile starts the engine anyway.
                    logger.info("no restart of %s: %s", event.served_name, exc.message)
                    supervisor.after_run(restart=False, ready=False)
                else:
                    self.stdout.write(f"restarting vLLM on {event.served_name}")
        if supervisor.watched is not None and not watching and not events:
            self.stdout.write(f"watching vLLM: {supervisor.watched.detail}")
        return events

    def _stop(self, signum: int, frame: object) -> None:
        logger.info("worker stopping (signal %s)", signum)
        self.stopping.set()

    def _download(self, job: Any, backend: BackendSpec) -> None:
        try:
            services.download_run(job=job, backend=backend, should_stop=self.stopping.is_set)
        finally:
            close_old_connections()
            connection.close()

    def _start_configured_model(self, backend: BackendSpec, engine: engines.Engine) -> None:
        model = backend.engine.model
        if not model or backend.engine.kind != "process":
            return
        if engine.state().running:
            return
        snapshot = hub.snapshot_path(model)
        try:
            engine.serve(model=str(snapshot or model), served_name=model)
            self.stdout.write(f"started vLLM on {model}")
        except EngineError as exc:
            self.stderr.write(f"could not start {model}: {exc}")


def _probe(backend: BackendSpec) -> tuple[bool, str]:
    found = health.look_sync(backend)
    return found.healthy, found.detail


def _event_note(event: Event) -> str:
    """What the heartbeat says of the engine after `event` (the admin shows it)."""
    if isinstance(event, Crashed):
        return f"engine down: {event.detail} ({event.reason})"[:200]
    if isinstance(event, RestartDue):
        return f"engine down: restarting {event.served_name}"
    return ""


def _down_note(supervisor: Supervisor, switch: ModelSwitch) -> str:
    if not supervisor.down:
        return ""
    return f"engine down: {switch.kind} failed: {switch.error}"[:200]

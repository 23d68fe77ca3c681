"""The settings screen, for keys with the admin scope: downloaded models and the one
served (/api/model-status), switching (/api/switch-model, then its phases from
/api/model-loading-status), downloads with live progress (/api/download-model,
/api/download-progress) and the health panel (/api/healthz: vLLM's own queue, and the
gateway's admission queue in front of each backend: its capacity, how many run, how
many wait per tier), with the key's token quotas (/api/usage: what is left of each and
when it resets). A key without the admin scope gets the gateway's own reason instead;
health needs no key.

With several backends (vLLM servers) every one is shown (health, served model, queue,
its downloaded models) and a switch or a download goes to the backend chosen in the
picker (`?backend=`); with one, nothing is named and the gateway takes that one."""

import asyncio
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)

from talktuah_chat.gateway import Gateway, GatewayError
from talktuah_chat.screens.common import ConfirmScreen

POLL_SECONDS = 0.5
FINISHED_SWITCH = ("ready", "failed")
FINISHED_DOWNLOAD = ("succeeded", "failed", "cancelled")


def size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def count(value: Any) -> str:
    return "?" if value is None else f"{float(value):.0f}"


def admission_text(admission: dict[str, Any] | None) -> str:
    """The gateway's queue for one backend (BackendQueue.figures()): the slots it admits
    at once, how many run, how many wait (by tier when any do)."""
    if not admission:
        return "not reported"
    waiting = admission.get("waiting")
    tiers: dict[str, int] = waiting if isinstance(waiting, dict) else {}
    total = sum(tiers.values()) if isinstance(waiting, dict) else int(waiting or 0)
    text = (
        f"capacity {admission.get('capacity', '?')}, {admission.get('running', '?')} running, "
        f"{total} waiting"
    )
    if total and tiers:
        text += " (" + ", ".join(f"{n} {tier}" for tier, n in tiers.items() if n) + ")"
    return text


def health_text(health: dict[str, Any]) -> str:
    model = health.get("model") or {}
    queue = health.get("queue") or {}
    backends = health.get("backends") or []
    lines = [
        f"Status: {health.get('status')}    Model: {model.get('id') or 'none'}"
        + (f" (max {model['max_model_len']} tokens)" if model.get("max_model_len") else ""),
        f"vLLM queue: {count(queue.get('waiting'))} waiting, "
        f"{count(queue.get('running'))} running, "
        f"KV cache {float(queue.get('kv_cache_usage') or 0) * 100:.0f}%",
    ]
    if len(backends) == 1:
        lines.append(f"Gateway queue: {admission_text(backends[0].get('admission'))}")
    gpus = health.get("gpu")
    if isinstance(gpus, list) and gpus:
        for gpu in gpus:
            lines.append(
                f"GPU {gpu.get('index')}: {gpu.get('name')}, "
                f"{size(gpu.get('memory_used_bytes'))} / {size(gpu.get('memory_total_bytes'))}, "
                f"{gpu.get('utilization_percent')}% busy"
            )
    else:
        lines.append("GPU: unknown (no GPU visible to the gateway)")
    if len(backends) > 1:
        lines.append("Backends:")
        for backend in backends:
            queue = backend.get("queue") or {}
            lines.append(
                f"  {backend.get('name')}: {backend.get('status')}, "
                f"serving {', '.join(backend.get('models') or []) or 'nothing'}, "
                f"vLLM queue {count(queue.get('waiting'))} waiting / "
                f"{count(queue.get('running'))} running, "
                f"{backend.get('in_flight', 0)} in flight"
                + (", ejected" if backend.get("ejected") else "")
                + (", draining" if backend.get("draining") else "")
            )
            lines.append(f"    gateway queue: {admission_text(backend.get('admission'))}")
    return "\n".join(lines)


def quota_text(usage: dict[str, Any]) -> str:
    """The key's token quotas as /api/usage gives them: what is left of each, and when
    it resets."""
    quotas = usage.get("quota") or []
    if not quotas:
        return "Token quota: none for this key"
    lines = []
    for quota in quotas:
        scope = f"team {quota.get('team')}" if quota.get("scope") == "team" else "key"
        when = str(quota.get("resets_at") or "")[:16].replace("T", " ")
        left = (
            f"{count(quota.get('remaining'))} of {count(quota.get('limit'))} tokens left"
            if quota.get("remaining") is not None
            else f"{count(quota.get('limit'))} tokens, use unknown right now"
        )
        lines.append(
            f"Token quota ({scope}, per {quota.get('period')}): {left}, "
            f"resets {when} {quota.get('time_zone') or ''}".rstrip()
        )
    return "\n".join(lines)


def progress_text(job: dict[str, Any], *, with_backend: bool = False) -> str:
    eta = job.get("eta_seconds")
    where = f" on {job.get('backend')}" if with_backend else ""
    lines = [
        f"{job.get('model_id')}{where}: {job.get('status')} "
        f"{float(job.get('percent') or 0):.0f}% — "
        f"{size(job.get('bytes_completed'))} of {size(job.get('bytes_total'))}, "
        f"{size(job.get('speed_bytes_per_second'))}/s"
        + (f", ETA {eta:.0f} s" if eta is not None else "")
        + f", files {job.get('files_completed')}/{job.get('files_total')}"
    ]
    for item in job.get("files") or []:
        lines.append(
            f"  {item['path']}: {size(item['bytes_completed'])} / {size(item['bytes_total'])}"
        )
    if job.get("error"):
        lines.append(f"Error: {job['error']}")
    if job.get("note"):
        lines.append(str(job["note"]))
    return "\n".join(lines)


class SettingsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    """The gateway's models, switches, downloads and health, through `gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway
        self.backends: list[str] = []  # filled only when the gateway has several
        self.rows: dict[str, tuple[str | None, str]] = {}  # row key: (backend, model)

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="settings"):
            yield Static("Checking the key's scope…", id="admin-note", markup=False)
            yield Static("", id="health", markup=False)
            yield Static("", id="quota", markup=False)
            yield DataTable(id="models", cursor_type="row")
            with Horizontal(classes="row", id="backend-row"):
                yield Label("Switch or download on backend ", id="backend-label")
                yield Select[str]([], prompt="backend", id="backend")
            with Horizontal(classes="row"):
                yield Input(placeholder="model to serve (org/name)", id="switch-id")
                yield Button("Switch", id="switch", variant="warning")
            yield Static("", id="switch-status", markup=False)
            with Horizontal(classes="row"):
                yield Input(placeholder="Hub repo to download (org/name)", id="download-id")
                yield Button("Download", id="download", variant="primary")
            yield ProgressBar(total=100, id="download-bar", show_eta=False)
            yield Static("", id="download-status", markup=False)
        yield Footer()

    DEFAULT_CSS = """
    #settings .row { height: auto; }
    #settings Input { width: 1fr; }
    #models { height: auto; max-height: 12; }
    #health { margin: 1 0 0 0; }
    #quota { margin: 0 0 1 0; }
    #admin-note { color: $warning; }
    #download-bar { display: none; }
    #backend-row { display: none; }
    #backend-label { padding: 1 0; }
    #backend { width: 30; }
    """

    async def on_mount(self) -> None:
        self.run_worker(self.watch_health(), group="health")
        await self.load_models()

    async def load_models(self) -> None:
        note = self.query_one("#admin-note", Static)
        try:
            status = await self.gateway.model_status()
        except GatewayError as error:
            if error.status == 403 and error.code == "insufficient_scope":
                note.update(
                    "Settings need a key with the admin scope; this key has not: "
                    f"the gateway says “{error.message}”. Health is shown below."
                )
            else:
                note.update(f"Cannot read the models: {error}")
            for widget_id in ("#models", ".row", "#download-bar", "#backend-row"):
                for widget in self.query(widget_id):
                    widget.display = False
            return
        each = status.get("backends") or []
        several = len(each) > 1
        self.show_backends([str(entry["backend"]) for entry in each] if several else [])
        table = self.query_one("#models", DataTable)
        table.clear(columns=True)
        self.rows = {}
        if several:
            table.add_columns("backend", "model", "size", "served")
            note.update(
                "Served now: "
                + "; ".join(
                    f"{entry['backend']}: {entry.get('current_model') or 'nothing'}"
                    f" (engine {entry.get('engine')})"
                    for entry in each
                )
            )
        else:
            table.add_columns("model", "size", "served")
            current = status.get("current_model")
            note.update(f"Served now: {current or 'nothing'}  (engine {status.get('engine')})")
        for entry in each if several else [status]:
            backend = str(entry["backend"]) if several else None
            for model in entry.get("models") or []:
                model_id = str(model["model_id"])
                served = "● served" if model_id == entry.get("current_model") else ""
                cells = [model_id, size(model["size_bytes"]), served]
                key = f"{backend}\n{model_id}" if backend else model_id
                self.rows[key] = (backend, model_id)
                table.add_row(*([backend, *cells] if backend else cells), key=key)

    def show_backends(self, names: list[str]) -> None:
        """The backend picker, shown with several backends; it keeps its choice."""
        self.backends = names
        self.query_one("#backend-row").display = bool(names)
        select = self.query_one("#backend", Select)
        if not names:
            return
        chosen = self.backend
        select.set_options([(name, name) for name in names])
        select.value = chosen if chosen in names else names[0]

    @property
    def backend(self) -> str | None:
        """The backend a switch or a download goes to; None with one backend."""
        if not self.backends:
            return None
        value = self.query_one("#backend", Select).value
        return value if isinstance(value, str) else None

    async def watch_health(self) -> None:
        panel = self.query_one("#health", Static)
        quota = self.query_one("#quota", Static)
        while True:
            try:
                panel.update(health_text(await self.gateway.health()))
            except GatewayError as error:
                panel.update(f"Health: {error}")
            try:
                quota.update(quota_text(await self.gateway.usage()))
            except GatewayError as error:
                quota.update(f"Token quota: {error}")
            await asyncio.sleep(2)

    @on(DataTable.RowSelected, "#models")
    def pick(self, event: DataTable.RowSelected) -> None:
        backend, model_id = self.rows[str(event.row_key.value)]
        self.query_one("#switch-id", Input).value = model_id
        if backend is not None:
            self.query_one("#backend", Select).value = backend

    @on(Button.Pressed, "#switch")
    @on(Input.Submitted, "#switch-id")
    def ask_switch(self) -> None:
        model_id = self.query_one("#switch-id", Input).value.strip()
        if not model_id:
            self.query_one("#switch-status", Static).update("Pick or type a model first.")
            return

        backend = self.backend
        where = f" on {backend}" if backend else ""

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.run_worker(self.switch(model_id, backend), group="switch", exclusive=True)

        question = f"Serve {model_id}{where}? Its vLLM restarts on it."
        self.app.push_screen(ConfirmScreen(question), confirmed)

    async def switch(self, model_id: str, backend: str | None) -> None:
        status = self.query_one("#switch-status", Static)
        what = f"Switch to {model_id}" + (f" on {backend}" if backend else "")
        try:
            switch = await self.gateway.switch_model(model_id, backend)
        except GatewayError as error:
            status.update(f"Switch refused: {error}")
            return
        status.update(f"{what}: {switch.get('phase')}")
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                loading = await self.gateway.loading_status(backend)
            except GatewayError as error:
                status.update(f"{what}: cannot read its status ({error})")
                continue
            current = loading.get("switch") or {}
            if current.get("id") != switch.get("id"):
                continue
            phase = current.get("phase")
            line = f"{what}: {phase}"
            if current.get("error"):
                line += f" — {current['error']}"
            status.update(line)
            if phase in FINISHED_SWITCH:
                break
        await self.load_models()

    @on(Button.Pressed, "#download")
    @on(Input.Submitted, "#download-id")
    def ask_download(self) -> None:
        model_id = self.query_one("#download-id", Input).value.strip()
        if model_id:
            work = self.download(model_id, self.backend)
            self.run_worker(work, group="download", exclusive=True)

    async def download(self, model_id: str, backend: str | None) -> None:
        status = self.query_one("#download-status", Static)
        bar = self.query_one("#download-bar", ProgressBar)
        try:
            job = await self.gateway.download_model(model_id, backend)
        except GatewayError as error:
            status.update(f"Download refused: {error}")
            return
        bar.display = True
        while True:
            bar.update(progress=float(job.get("percent") or 0))
            status.update(progress_text(job, with_backend=backend is not None))
            if job.get("status") in FINISHED_DOWNLOAD:
                break
            await asyncio.sleep(POLL_SECONDS)
            try:
                job = await self.gateway.download_progress(int(job["job_id"]))
            except GatewayError as error:
                status.update(f"Cannot read the download's progress: {error}")
        await self.load_models()

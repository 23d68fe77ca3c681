"""The settings screen, for keys with the admin scope: downloaded models and the one
served (/api/model-status), switching (/api/switch-model, then its phases from
/api/model-loading-status), downloads with live progress (/api/download-model,
/api/download-progress) and the health panel (/api/healthz). A key without the admin
scope gets the gateway's own reason instead."""

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, ProgressBar, Static

from talktuah_chat.gateway import GatewayError

if TYPE_CHECKING:
    from talktuah_chat.app import ChatApp

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


def health_text(health: dict[str, Any]) -> str:
    model = health.get("model") or {}
    queue = health.get("queue") or {}
    lines = [
        f"Status: {health.get('status')}    Model: {model.get('id') or 'none'}"
        + (f" (max {model['max_model_len']} tokens)" if model.get("max_model_len") else ""),
        f"Queue: {count(queue.get('waiting'))} waiting, {count(queue.get('running'))} running, "
        f"KV cache {float(queue.get('kv_cache_usage') or 0) * 100:.0f}%",
    ]
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
    backends = health.get("backends") or []
    if len(backends) > 1:
        lines.append("Backends:")
        for backend in backends:
            lines.append(
                f"  {backend.get('name')}: {backend.get('status')}, "
                f"models {', '.join(backend.get('models') or []) or 'none'}, "
                f"{backend.get('in_flight', 0)} in flight"
                + (", ejected" if backend.get("ejected") else "")
            )
    return "\n".join(lines)


def progress_text(job: dict[str, Any]) -> str:
    eta = job.get("eta_seconds")
    lines = [
        f"{job.get('model_id')}: {job.get('status')} {float(job.get('percent') or 0):.0f}% — "
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

    @property
    def chat_app(self) -> "ChatApp":
        from talktuah_chat.app import ChatApp

        app = self.app
        assert isinstance(app, ChatApp)
        return app

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="settings"):
            yield Static("Checking the key's scope…", id="admin-note", markup=False)
            yield Static("", id="health", markup=False)
            yield DataTable(id="models", cursor_type="row")
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
    #health { margin: 1 0; }
    #admin-note { color: $warning; }
    #download-bar { display: none; }
    """

    async def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        table.add_columns("model", "size", "served")
        self.run_worker(self.watch_health(), group="health")
        await self.load_models()

    async def load_models(self) -> None:
        note = self.query_one("#admin-note", Static)
        try:
            status = await self.chat_app.gateway.model_status()
        except GatewayError as error:
            if error.status == 403 and error.code == "insufficient_scope":
                note.update(
                    "Settings need a key with the admin scope; this key has not: "
                    f"the gateway says “{error.message}”. Health is shown below."
                )
            else:
                note.update(f"Cannot read the models: {error}")
            for widget_id in ("#models", ".row", "#download-bar"):
                for widget in self.query(widget_id):
                    widget.display = False
            return
        current = status.get("current_model")
        note.update(f"Served now: {current or 'nothing'}  (engine {status.get('engine')})")
        table = self.query_one("#models", DataTable)
        table.clear()
        for model in status.get("models") or []:
            served = "● served" if model["model_id"] == current else ""
            table.add_row(
                model["model_id"], size(model["size_bytes"]), served, key=model["model_id"]
            )

    async def watch_health(self) -> None:
        panel = self.query_one("#health", Static)
        while True:
            try:
                panel.update(health_text(await self.chat_app.gateway.health()))
            except GatewayError as error:
                panel.update(f"Health: {error}")
            await asyncio.sleep(2)

    @on(DataTable.RowSelected, "#models")
    def pick(self, event: DataTable.RowSelected) -> None:
        self.query_one("#switch-id", Input).value = str(event.row_key.value)

    @on(Button.Pressed, "#switch")
    @on(Input.Submitted, "#switch-id")
    def ask_switch(self) -> None:
        from talktuah_chat.app import ConfirmScreen

        model_id = self.query_one("#switch-id", Input).value.strip()
        if not model_id:
            self.query_one("#switch-status", Static).update("Pick or type a model first.")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.run_worker(self.switch(model_id), group="switch", exclusive=True)

        self.app.push_screen(ConfirmScreen(f"Serve {model_id}? vLLM restarts on it."), confirmed)

    async def switch(self, model_id: str) -> None:
        status = self.query_one("#switch-status", Static)
        gateway = self.chat_app.gateway
        try:
            switch = await gateway.switch_model(model_id)
        except GatewayError as error:
            status.update(f"Switch refused: {error}")
            return
        status.update(f"Switch to {model_id}: {switch.get('phase')}")
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                loading = await gateway.loading_status()
            except GatewayError as error:
                status.update(f"Switch to {model_id}: cannot read its status ({error})")
                continue
            current = loading.get("switch") or {}
            if current.get("id") != switch.get("id"):
                continue
            phase = current.get("phase")
            line = f"Switch to {model_id}: {phase}"
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
            self.run_worker(self.download(model_id), group="download", exclusive=True)

    async def download(self, model_id: str) -> None:
        status = self.query_one("#download-status", Static)
        bar = self.query_one("#download-bar", ProgressBar)
        gateway = self.chat_app.gateway
        try:
            job = await gateway.download_model(model_id)
        except GatewayError as error:
            status.update(f"Download refused: {error}")
            return
        bar.display = True
        while True:
            bar.update(progress=float(job.get("percent") or 0))
            status.update(progress_text(job))
            if job.get("status") in FINISHED_DOWNLOAD:
                break
            await asyncio.sleep(POLL_SECONDS)
            try:
                job = await gateway.download_progress(int(job["job_id"]))
            except GatewayError as error:
                status.update(f"Cannot read the download's progress: {error}")
        await self.load_models()

"""The settings screen against the real gateway: what an admin key sees (served model,
health), what an inference key is told, a switch followed through its phases to
"ready", a download's progress reaching 100%, and with two backends (two simulators)
every backend shown and a switch or a download sent to the one picked."""

import pytest
from textual.widgets import DataTable, Select, Static

from backends.spec import default_spec
from modelmgr import services
from modelmgr.models import DownloadJob, ModelSwitch, Scope
from talktuah_chat.screens.settings import SettingsScreen, health_text, quota_text
from tests.chat.conftest import drive, in_thread, text_of, until
from tests.modelmgr.test_lifecycle import download, tiny_model_files

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = (Scope.ADMIN, Scope.INFERENCE)


async def open_settings(pilot) -> SettingsScreen:
    await pilot.press("f9")
    return await until(
        pilot, lambda: isinstance(pilot.app.screen, SettingsScreen) and pilot.app.screen
    )


def shown(screen: SettingsScreen, selector: str) -> str:
    return text_of(screen.query_one(selector, Static))


def test_an_admin_key_sees_the_served_model_and_health(chat_app, simulator, make_key):
    simulator(model="demo-model")
    app = chat_app(make_key(scopes=ADMIN))

    async def scenario(pilot):
        screen = await open_settings(pilot)
        await until(pilot, lambda: "Served now: demo-model" in shown(screen, "#admin-note"))
        health = await until(pilot, lambda: "Status:" in shown(screen, "#health"))
        health = shown(screen, "#health")
        assert "Status: ok" in health
        assert "Model: demo-model (max 512 tokens)" in health
        assert "vLLM queue: 0 waiting, 0 running" in health
        # One backend: the gateway's queue in front of it on a line of its own.
        assert "Gateway queue: capacity 256, 0 running, 0 waiting" in health
        assert "GPU:" in health
        assert "Backends:" not in health
        # One backend: no picker, and no `backend` column in the table.
        assert not screen.query_one("#backend-row").display
        assert screen.backend is None
        assert [str(c.label) for c in screen.query_one("#models").columns.values()] == [
            "model",
            "size",
            "served",
        ]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(pilot.app.screen, SettingsScreen))

    drive(app, scenario)


def test_an_inference_key_is_told_why_not(chat_app, simulator, make_key):
    simulator()
    app = chat_app(make_key())

    async def scenario(pilot):
        screen = await open_settings(pilot)
        note = await until(pilot, lambda: "admin scope" in shown(screen, "#admin-note"))
        note = shown(screen, "#admin-note")
        assert "lacks the 'admin' scope" in note
        assert not screen.query_one("#models").display
        # Health needs no admin scope: it is still shown.
        await until(pilot, lambda: "Status:" in shown(screen, "#health"))

    drive(app, scenario)


def test_a_switch_is_followed_until_ready(chat_app, fake_hub, process_engine, make_key):
    download(fake_hub, "org/model-a")
    download(fake_hub, "org/model-b")
    process_engine.serve(model="org/model-a", served_name="org/model-a")
    backend = default_spec()
    assert services.wait_until_serving("org/model-a", backend=backend, timeout=20) is None
    app = chat_app(make_key(scopes=ADMIN))
    threads: list = []

    def run_the_switch():
        claimed = services.model_switch_claim(worker="test", backend=backend)
        assert claimed is not None
        services.model_switch_run(switch=claimed, backend=backend, engine=process_engine)

    async def scenario(pilot):
        screen = await open_settings(pilot)
        await until(pilot, lambda: "Served now: org/model-a" in shown(screen, "#admin-note"))
        table = screen.query_one("#models")
        assert table.row_count == 2
        screen.query_one("#switch-id").value = "org/model-b"
        await pilot.click("#switch")
        await pilot.click("#yes")
        await until(pilot, lambda: "Switch to org/model-b" in shown(screen, "#switch-status"))
        threads.append(in_thread(run_the_switch))
        phases: set[str] = set()

        def finished() -> bool:
            line = shown(screen, "#switch-status")
            phases.add(line.split(": ", 1)[1].split(" ")[0])
            return line.endswith(": ready")

        await until(pilot, finished, within=40, what="the switch to be ready")
        assert phases & {"starting", "loading"}, phases
        await until(pilot, lambda: "Served now: org/model-b" in shown(screen, "#admin-note"))

    try:
        drive(app, scenario)
    finally:
        for thread in threads:
            thread.join(60)


def test_a_download_shows_its_progress_to_100_percent(chat_app, fake_hub, make_key, settings):
    settings.DOWNLOAD_PROGRESS_WRITES_PER_SECOND = 20
    fake_hub.add_repo("org/new", tiny_model_files(b"\1" * (3 * 1024 * 1024)))
    fake_hub.slow("org/new", "model.safetensors", 0.05, chunk=256 * 1024)
    app = chat_app(make_key(scopes=ADMIN))
    threads: list = []
    percents: list[float] = []

    def run_the_download():
        backend = default_spec()
        claimed = services.download_claim(worker="test", backend=backend)
        assert claimed is not None
        services.download_run(job=claimed, backend=backend)

    async def scenario(pilot):
        screen = await open_settings(pilot)
        await until(pilot, lambda: "Served now" in shown(screen, "#admin-note"))
        screen.query_one("#download-id").value = "org/new"
        await pilot.click("#download")
        await until(pilot, lambda: "org/new: queued" in shown(screen, "#download-status"))
        threads.append(in_thread(run_the_download))
        bar = screen.query_one("#download-bar")

        def done() -> bool:
            percents.append(bar.progress)
            return "succeeded" in shown(screen, "#download-status")

        await until(pilot, done, within=30, what="the download to finish")
        status = shown(screen, "#download-status")
        assert "100%" in status
        assert "model.safetensors: 3.0 MB / 3.0 MB" in status
        assert bar.progress == 100
        await until(pilot, lambda: screen.query_one("#models").row_count == 1)

    try:
        drive(app, scenario)
    finally:
        for thread in threads:
            thread.join(60)
    assert any(0 < p < 100 for p in percents), percents


def test_the_health_panel_lists_every_backend_when_there_are_several():
    # The panel's text from a /api/healthz answer with two backends (shape as in README).
    backend = {
        "status": "ok",
        "models": ["m"],
        "in_flight": 1,
        "ejected": False,
        "admission": {"capacity": 4, "running": 4, "waiting": {"interactive": 2, "batch": 1}},
    }
    text = health_text(
        {
            "status": "degraded",
            "model": {"id": "m", "max_model_len": 512},
            "queue": {"waiting": 2.0, "running": 1.0, "kv_cache_usage": 0.25},
            "gpu": [
                {
                    "index": 0,
                    "name": "L4",
                    "memory_used_bytes": 2 * 1024**3,
                    "memory_total_bytes": 24 * 1024**3,
                    "utilization_percent": 40,
                }
            ],
            "backends": [
                {**backend, "name": "gpu-a"},
                {
                    **backend,
                    "name": "gpu-b",
                    "status": "down",
                    "models": [],
                    "ejected": True,
                    "admission": {
                        "capacity": 8,
                        "running": 0,
                        "waiting": {"interactive": 0, "batch": 0},
                    },
                },
            ],
        }
    )
    assert "Status: degraded" in text
    assert "vLLM queue: 2 waiting, 1 running, KV cache 25%" in text
    assert "GPU 0: L4, 2.0 GB / 24.0 GB, 40% busy" in text
    lines = text.splitlines()
    gpu_a = lines.index("  gpu-a: ok, serving m, vLLM queue ? waiting / ? running, 1 in flight")
    # Under each backend, the gateway's own queue in front of it (issue 24).
    assert lines[gpu_a + 1] == (
        "    gateway queue: capacity 4, 4 running, 3 waiting (2 interactive, 1 batch)"
    )
    gpu_b = lines.index(
        "  gpu-b: down, serving nothing, vLLM queue ? waiting / ? running, 1 in flight, ejected"
    )
    assert lines[gpu_b + 1] == "    gateway queue: capacity 8, 0 running, 0 waiting"
    assert "Gateway queue:" not in text  # the one-backend line: not with several


def test_with_two_backends_each_is_shown_and_the_picked_one_gets_the_work(
    chat_app, two_backends, make_key
):
    app = chat_app(make_key(scopes=ADMIN))
    seen: dict[str, object] = {}

    async def scenario(pilot):
        screen = await open_settings(pilot)
        note = await until(
            pilot, lambda: "gpu-2: org/other" in shown(screen, "#admin-note"), what="the note"
        )
        note = shown(screen, "#admin-note")
        assert "default: org/old (engine" in note and "gpu-2: org/other (engine process)" in note
        table = screen.query_one("#models", DataTable)
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows == [
            ["default", "org/old", "1.0 KB", "● served"],
            ["gpu-2", "org/other", "3.0 GB", "● served"],
            ["gpu-2", "org/new", "512.0 MB", ""],
        ]
        health = await until(
            pilot,
            lambda: shown(screen, "#health").count(": ok, serving") == 2,
            what="both backends healthy in the panel",
        )
        health = shown(screen, "#health")
        for name, model in (("default", "org/old"), ("gpu-2", "org/other")):
            assert (
                f"  {name}: ok, serving {model}, vLLM queue 0 waiting / 0 running, 0 in flight\n"
                "    gateway queue: capacity 256, 0 running, 0 waiting"
            ) in health
        picker = screen.query_one("#backend", Select)
        assert screen.query_one("#backend-row").display and picker.value == "default"

        # Picking gpu-2's org/new in the table picks its backend too; the switch names it.
        table.focus()
        table.move_cursor(row=2)
        await pilot.press("enter")
        assert screen.query_one("#switch-id").value == "org/new"
        assert picker.value == "gpu-2"
        await pilot.click("#switch")
        await pilot.click("#yes")
        seen["switch"] = await until(
            pilot,
            lambda: (
                "Switch to org/new on gpu-2: " in shown(screen, "#switch-status")
                and shown(screen, "#switch-status")
            ),
            what="the switch's status",
        )

        # A download goes to the backend in the picker: gpu-2, then default.
        screen.query_one("#download-id").value = "org/fresh"
        await pilot.click("#download")
        seen["gpu-2 download"] = await until(
            pilot,
            lambda: (
                "org/fresh on gpu-2: queued" in shown(screen, "#download-status")
                and shown(screen, "#download-status")
            ),
            what="the download on gpu-2",
        )
        picker.value = "default"
        # Enter in the field: a button ignores a second click within its press effect.
        screen.query_one("#download-id").focus()
        await pilot.press("enter")
        seen["default download"] = await until(
            pilot,
            lambda: (
                "org/fresh on default: queued" in shown(screen, "#download-status")
                and shown(screen, "#download-status")
            ),
            what="the download on default",
        )

    drive(app, scenario)
    assert "refused" not in str(seen["switch"]), seen
    switch = ModelSwitch.objects.get(to_model="org/new")
    assert (switch.backend, switch.from_model) == ("gpu-2", "org/other")
    jobs = DownloadJob.objects.filter(repo_id="org/fresh")
    assert sorted(job.backend for job in jobs) == ["default", "gpu-2"]
    # gpu-2's worker is alive (its heartbeat), default's is not: the gateway says so.
    assert "run_worker" not in str(seen["gpu-2 download"])
    assert "worker" in str(seen["default download"]).lower()


def test_the_settings_screen_shows_what_is_left_of_the_keys_quota(chat_app, simulator, make_key):
    from modelmgr.models import ApiKey
    from teams.services import api_key_quota_set

    simulator(model="demo-model")
    key = make_key(scopes=ADMIN)
    api_key_quota_set(
        key=ApiKey.objects.get(prefix=key.split(".")[0]), tokens_per_day=600, tokens_per_month=None
    )
    app = chat_app(key)

    async def scenario(pilot):
        screen = await open_settings(pilot)
        text = await until(pilot, lambda: "Token quota" in shown(screen, "#quota"))
        text = shown(screen, "#quota")
        assert "Token quota (key, per day): 600 of 600 tokens left, resets " in text
        assert text.endswith("UTC")

    drive(app, scenario)


def test_the_quota_lines_say_whose_quota_and_when_it_resets():
    usage = {
        "quota": [
            {"scope": "key", "period": "day", "limit": 600, "used": 180, "remaining": 420,
             "resets_at": "2026-12-07T00:00:00+00:00", "time_zone": "UTC"},
            {"scope": "team", "team": "research", "period": "month", "limit": 10000,
             "used": None, "remaining": None, "resets_at": "2027-01-01T00:00:00+01:00",
             "time_zone": "Europe/Berlin"},
        ]
    }  # fmt: skip
    assert quota_text(usage).splitlines() == [
        "Token quota (key, per day): 420 of 600 tokens left, resets 2026-12-07 00:00 UTC",
        "Token quota (team research, per month): 10000 tokens, use unknown right now, "
        "resets 2027-01-01 00:00 Europe/Berlin",
    ]
    assert quota_text({"quota": []}) == "Token quota: none for this key"

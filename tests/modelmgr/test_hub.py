"""The Hub adapter against the real huggingface_hub client and a local fake Hub."""

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devtools.fakehub import FakeHub
from modelmgr import hub
from plumbing.errors import (
    DiskFull,
    DownloadCancelled,
    HubError,
    HubUnauthorized,
    HubUnreachable,
    RepoGated,
    RepoNotFound,
)
from tests.net import free_port

MiB = 1024 * 1024


def weights(n_bytes: int, seed: str = "w") -> bytes:
    """Deterministic bytes that do not repeat (so a misplaced range would show)."""
    out = bytearray()
    counter = 0
    while len(out) < n_bytes:
        out += hashlib.sha256(f"{seed}{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n_bytes])


def small_model(big: int = 3 * MiB) -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": weights(big),
    }


class TestPlan:
    def test_it_lists_files_and_sizes_at_the_resolved_commit(self, fake_hub: FakeHub) -> None:
        commit = fake_hub.add_repo("org/tiny", small_model(big=MiB))

        plan = hub.plan_download("org/tiny")

        assert plan.repo_id == "org/tiny"
        assert plan.revision == "main"
        assert plan.commit == commit
        assert [(f.path, f.size) for f in plan.files] == [
            ("config.json", 23),
            ("model.safetensors", MiB),
            ("tokenizer.json", 18),
        ]
        assert plan.total_bytes == MiB + 23 + 18

    def test_it_skips_what_vllm_does_not_load_when_safetensors_exist(
        self, fake_hub: FakeHub
    ) -> None:
        fake_hub.add_repo(
            "org/mixed",
            {
                ".gitattributes": b"*.safetensors filter=lfs",
                "README.md": b"# model",
                "config.json": b"{}",
                "generation_config.json": b"{}",
                "tokenizer.json": b"{}",
                "tokenizer.model": b"spm",
                "model.safetensors.index.json": b"{}",
                "model-00001-of-00002.safetensors": b"a" * 100,
                "model-00002-of-00002.safetensors": b"b" * 100,
                "consolidated.safetensors": b"c" * 200,
                "pytorch_model.bin": b"d" * 200,
                "training_args.bin": b"e",
                "original/consolidated.00.pth": b"f" * 200,
                "original/params.json": b"{}",
                "consolidated.pth": b"g" * 200,
                "model.gguf": b"h" * 200,
                "flax_model.msgpack": b"i" * 200,
                "onnx/model.onnx": b"j" * 200,
            },
        )

        plan = hub.plan_download("org/mixed")

        assert [f.path for f in plan.files] == [
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer.model",
        ]
        assert set(plan.skipped) == {
            ".gitattributes",
            "consolidated.safetensors",
            "pytorch_model.bin",
            "training_args.bin",
            "original/consolidated.00.pth",
            "original/params.json",
            "consolidated.pth",
            "model.gguf",
            "flax_model.msgpack",
            "onnx/model.onnx",
        }

    def test_it_keeps_bin_weights_when_there_are_no_safetensors(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo(
            "org/old",
            {"config.json": b"{}", "pytorch_model.bin": b"w" * 300, "flax_model.msgpack": b"x"},
        )

        plan = hub.plan_download("org/old")

        assert [f.path for f in plan.files] == ["config.json", "pytorch_model.bin"]

    def test_it_resolves_a_commit_given_as_revision(self, fake_hub: FakeHub) -> None:
        commit = fake_hub.add_repo("org/tiny", small_model(big=1000))

        plan = hub.plan_download("org/tiny", commit)

        assert plan.commit == commit

    def test_it_reports_a_missing_repo_by_name(self, fake_hub: FakeHub) -> None:
        with pytest.raises(HubError) as caught:
            hub.plan_download("nobody/nothing-here")

        assert isinstance(caught.value, RepoNotFound)
        assert "'nobody/nothing-here' does not exist on the Hub" in str(caught.value)
        assert "HF_TOKEN" in str(caught.value)

    def test_it_reports_a_missing_revision(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=1000))

        with pytest.raises(HubError) as caught:
            hub.plan_download("org/tiny", "no-such-branch")

        assert isinstance(caught.value, RepoNotFound)
        assert "no revision 'no-such-branch'" in str(caught.value)

    def test_it_rejects_a_gated_repo_without_access(self, fake_hub: FakeHub, settings: Any) -> None:
        fake_hub.add_repo("org/gated", small_model(big=1000), gated=True)

        with pytest.raises(HubError) as anonymous:
            hub.plan_download("org/gated")
        with pytest.raises(HubError) as no_access:
            hub.plan_download("org/gated", token=fake_hub.token_without_access)
        settings.HF_TOKEN = fake_hub.token_without_access
        with pytest.raises(HubError) as from_settings:
            hub.plan_download("org/gated")

        assert isinstance(anonymous.value, RepoGated)
        assert "'org/gated' is gated" in str(anonymous.value)
        assert "set HF_TOKEN" in str(anonymous.value)
        assert isinstance(no_access.value, RepoGated)
        assert "has no access" in str(no_access.value)
        assert isinstance(from_settings.value, RepoGated)

    def test_it_plans_and_downloads_a_gated_repo_with_the_right_token(
        self, fake_hub: FakeHub
    ) -> None:
        files = small_model(big=200_000)
        fake_hub.add_repo("org/gated", files, gated=True)

        plan = hub.plan_download("org/gated", token=fake_hub.token)
        path = hub.download(plan, token=fake_hub.token)

        assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]

    def test_it_uses_the_token_from_settings(self, fake_hub: FakeHub, settings: Any) -> None:
        fake_hub.add_repo("org/gated", small_model(big=1000), gated=True)
        settings.HF_TOKEN = fake_hub.token

        path = hub.download(hub.plan_download("org/gated"))

        assert (path / "config.json").exists()

    def test_it_reports_a_rejected_token(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=1000))

        with pytest.raises(HubError) as caught:
            hub.plan_download("org/tiny", token="hf_revoked")

        assert isinstance(caught.value, HubUnauthorized)
        assert "HF_TOKEN" in str(caught.value)

    def test_it_reports_an_unreachable_hub(self, fake_hub: FakeHub, settings: Any) -> None:
        settings.HF_ENDPOINT = f"http://127.0.0.1:{free_port()}"

        with pytest.raises(HubError) as caught:
            hub.plan_download("org/tiny")

        assert isinstance(caught.value, HubUnreachable)
        assert settings.HF_ENDPOINT in str(caught.value)


class TestDownload:
    def test_it_downloads_into_the_cache_with_rising_progress(self, fake_hub: FakeHub) -> None:
        files = small_model(big=6 * MiB)
        fake_hub.add_repo("org/tiny", files)
        # ~0.5 s for the big file: enough for several throttled progress calls.
        fake_hub.slow("org/tiny", "model.safetensors", 0.005)
        plan = hub.plan_download("org/tiny")
        events: list[hub.Progress] = []

        path = hub.download(plan, on_progress=events.append)

        for name, content in files.items():
            assert (path / name).read_bytes() == content
        assert path == hub.snapshot_path("org/tiny")
        assert len(events) >= 4
        done = [e.bytes_done for e in events]
        assert done == sorted(done)
        assert [e.files_done for e in events] == sorted(e.files_done for e in events)
        assert all(e.bytes_total == plan.total_bytes for e in events)
        assert all(e.files_total == 3 for e in events)
        # Progress inside the big file, not only at file boundaries.
        assert any(
            0 < e.per_file["model.safetensors"][0] < 6 * MiB
            and e.current_file == "model.safetensors"
            for e in events
        )
        last = events[-1]
        assert last.bytes_done == plan.total_bytes
        assert last.files_done == 3
        assert last.per_file == {f.path: (f.size, f.size) for f in plan.files}

    def test_it_calls_on_progress_at_a_bounded_rate(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo(
            "org/many",
            {"config.json": b"{}"} | {f"shard-{i:02}.safetensors": b"x" * 1000 for i in range(40)},
        )
        plan = hub.plan_download("org/many")
        events: list[hub.Progress] = []

        started = time.monotonic()
        hub.download(plan, on_progress=events.append)
        elapsed = time.monotonic() - started

        assert events[-1].files_done == 41
        assert len(events) <= elapsed * hub.PROGRESS_CALLS_PER_SECOND + 2

    def test_it_does_not_fetch_files_that_are_already_cached(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=MiB))
        plan = hub.plan_download("org/tiny")
        hub.download(plan)
        gets_before = len([r for r in fake_hub.requests if r.method == "GET"])
        events: list[hub.Progress] = []

        hub.download(plan, on_progress=events.append)

        assert len([r for r in fake_hub.requests if r.method == "GET"]) == gets_before
        assert events[-1].bytes_done == plan.total_bytes

    def test_it_records_the_branch_so_the_snapshot_is_found_offline(
        self, fake_hub: FakeHub, settings: Any
    ) -> None:
        commit = fake_hub.add_repo("org/tiny", small_model(big=1000))

        hub.download(hub.plan_download("org/tiny"))

        ref = Path(settings.HF_CACHE_DIR) / "models--org--tiny" / "refs" / "main"
        assert ref.read_text() == commit

    def test_it_resumes_a_file_whose_connection_broke(self, fake_hub: FakeHub) -> None:
        files = small_model(big=4 * MiB)
        fake_hub.add_repo("org/tiny", files)
        fake_hub.break_after("org/tiny", "model.safetensors", int(2.5 * MiB))
        plan = hub.plan_download("org/tiny")

        path = hub.download(plan)

        assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
        first, second = fake_hub.file_requests("org/tiny", "model.safetensors")
        assert first.range is None
        assert first.bytes_sent == int(2.5 * MiB)
        # The retry asks for the rest only (from the last whole chunk written to disk).
        assert second.range is not None
        resumed_from = int(second.range.removeprefix("bytes=").rstrip("-"))
        assert 0 < resumed_from <= int(2.5 * MiB)
        assert second.bytes_sent == 4 * MiB - resumed_from

    def test_it_stops_when_asked_and_the_next_run_continues_the_file(
        self, fake_hub: FakeHub, settings: Any
    ) -> None:
        files = small_model(big=4 * MiB)
        fake_hub.add_repo("org/tiny", files)
        fake_hub.slow("org/tiny", "model.safetensors", 0.01)
        plan = hub.plan_download("org/tiny")
        big = next(f for f in plan.files if f.path == "model.safetensors")

        def stop_after_a_while() -> bool:
            return fake_hub.served("org/tiny", "model.safetensors") >= int(1.5 * MiB)

        started = time.monotonic()
        with pytest.raises(HubError) as caught:
            hub.download(plan, should_stop=stop_after_a_while)

        assert isinstance(caught.value, DownloadCancelled)
        assert time.monotonic() - started < 2  # promptly, not at the end of the file
        partial = (
            Path(settings.HF_CACHE_DIR) / "models--org--tiny" / "blobs" / f"{big.etag}.incomplete"
        )
        kept = partial.stat().st_size
        assert 0 < kept < 4 * MiB
        assert hub.snapshot_path("org/tiny") is None
        [cached] = hub.cached_models()
        assert cached.repo_id == "org/tiny"
        assert cached.complete is False

        fake_hub.slow("org/tiny", "model.safetensors", 0)
        events: list[hub.Progress] = []
        path = hub.download(plan, on_progress=events.append)

        assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
        resumed = fake_hub.file_requests("org/tiny", "model.safetensors")[-1]
        assert resumed.range == f"bytes={kept}-"
        assert resumed.bytes_sent == 4 * MiB - kept
        # Progress starts from what was already there.
        assert events[0].bytes_done >= kept
        assert not partial.exists()
        assert hub.snapshot_path("org/tiny") == path

    def test_it_reports_a_full_disk_while_writing(
        self, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from huggingface_hub import file_download

        def no_space(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        fake_hub.add_repo("org/tiny", small_model(big=1000))
        plan = hub.plan_download("org/tiny")
        monkeypatch.setattr(file_download, "http_get", no_space)

        with pytest.raises(HubError) as caught:
            hub.download(plan)

        assert isinstance(caught.value, DiskFull)

    def test_it_reports_a_hub_that_went_away(self, fake_hub: FakeHub, settings: Any) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=1000))
        plan = hub.plan_download("org/tiny")
        settings.HF_ENDPOINT = f"http://127.0.0.1:{free_port()}"

        with pytest.raises(HubError) as caught:
            hub.download(plan)

        assert isinstance(caught.value, HubUnreachable)


class TestCheckDisk:
    @pytest.fixture
    def free_bytes(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        free = [0]

        def disk_usage(path: Any) -> Any:
            return SimpleNamespace(total=10**12, used=10**12 - free[0], free=free[0])

        monkeypatch.setattr(hub.shutil, "disk_usage", disk_usage)
        return free

    def test_it_rejects_a_download_that_does_not_fit(
        self, fake_hub: FakeHub, free_bytes: list[int]
    ) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=3 * MiB))
        plan = hub.plan_download("org/tiny")
        free_bytes[0] = 100 * MiB

        with pytest.raises(HubError) as caught:
            hub.check_disk(plan)

        assert isinstance(caught.value, DiskFull)
        assert "3.1 MB still to download" in str(caught.value)
        assert "104.9 MB free" in str(caught.value)

    def test_it_accepts_a_download_that_fits(
        self, fake_hub: FakeHub, free_bytes: list[int]
    ) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=3 * MiB))
        plan = hub.plan_download("org/tiny")
        free_bytes[0] = plan.total_bytes + hub.DISK_MARGIN_BYTES

        hub.check_disk(plan)

    def test_it_counts_only_what_is_still_missing(
        self, fake_hub: FakeHub, free_bytes: list[int]
    ) -> None:
        fake_hub.add_repo("org/tiny", small_model(big=3 * MiB))
        plan = hub.plan_download("org/tiny")
        hub.download(plan)
        free_bytes[0] = 0

        hub.check_disk(plan)  # everything is in the cache already


class TestCache:
    def test_it_lists_nothing_for_a_missing_cache(self, tmp_path: Path) -> None:
        assert hub.cached_models(cache_dir=tmp_path / "nowhere") == []
        assert hub.snapshot_path("org/tiny", cache_dir=tmp_path / "nowhere") is None

    def test_it_lists_a_downloaded_model(self, fake_hub: FakeHub) -> None:
        commit = fake_hub.add_repo("org/tiny", small_model(big=MiB))
        path = hub.download(hub.plan_download("org/tiny"))

        [cached] = hub.cached_models()

        assert cached.repo_id == "org/tiny"
        assert cached.commit == commit
        assert cached.snapshot_path == path
        assert cached.complete is True
        assert cached.size_bytes == MiB + 23 + 18
        assert cached.last_modified > 0

    def test_it_marks_a_model_with_a_missing_shard_incomplete(
        self, fake_hub: FakeHub, settings: Any
    ) -> None:
        index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
        fake_hub.add_repo(
            "org/sharded",
            {
                "config.json": b"{}",
                "model.safetensors.index.json": json.dumps(index).encode(),
                "model-1.safetensors": b"1" * 100,
                "model-2.safetensors": b"2" * 100,
            },
        )
        path = hub.download(hub.plan_download("org/sharded"))
        assert hub.snapshot_path("org/sharded") == path

        os.unlink(path / "model-2.safetensors")

        [cached] = hub.cached_models()
        assert cached.complete is False
        assert hub.snapshot_path("org/sharded") is None

    def test_it_needs_config_and_weights(self, fake_hub: FakeHub) -> None:
        fake_hub.add_repo("org/no-weights", {"config.json": b"{}", "README.md": b"hi"})
        hub.download(hub.plan_download("org/no-weights"))

        [cached] = hub.cached_models()

        assert cached.complete is False
        assert hub.snapshot_path("org/no-weights") is None

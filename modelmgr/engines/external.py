"""The external engine: vLLM is started and switched by someone else (read-only)."""

from backends.spec import EngineConfig
from modelmgr.engines.base import EngineState
from plumbing.errors import EngineReadOnly


class ExternalEngine:
    """vLLM is started and switched by someone else; TalkTuah only talks to it."""

    name = "external"
    read_only = True

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def serve(self, *, model: str, served_name: str) -> None:
        raise EngineReadOnly(
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external); switch it there."
        )

    def stop(self) -> None:
        raise EngineReadOnly(
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external); stop it there."
        )

    def state(self) -> EngineState:
        return EngineState(
            False,
            None,
            None,
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external): whether it runs, "
            "and which model, only vLLM itself can tell (/health, /v1/models)",
        )

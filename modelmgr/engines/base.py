"""What every engine offers (`Engine`) and reports (`EngineState`)."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EngineState:
    """What the engine runs.

    model/served_name are what the engine was last told to serve (None when nothing
    was, or after stop() of the process engine); running says whether it is alive now.
    """

    running: bool
    model: str | None
    served_name: str | None
    detail: str


class Engine(Protocol):
    name: str
    read_only: bool

    def serve(self, *, model: str, served_name: str) -> None:
        """(Re)start vLLM on this model; returns once started, not once ready."""
        ...

    def stop(self) -> None: ...

    def state(self) -> EngineState: ...

"""What every engine offers (`Engine`) and reports (`EngineState`)."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EngineState:
    """What the engine runs.

    model/served_name are what the engine was last told to serve (None when nothing
    was, or after stop() of the process engine); running says whether it is alive now.
    The rest is what the worker's supervision (`supervisor.py`) reads: how a stopped
    vLLM ended (exit_code, None when unknown), which instance runs (incarnation: it
    changes when vLLM was started again behind the supervisor's back, say by Docker's
    restart policy; "" when the engine cannot tell), and whether what runs it is bringing
    it back by itself (restarts_itself: a container Docker is restarting, a Deployment
    whose pods the kubelet replaces), so the supervisor records the crash but leaves
    the restart to it.
    """

    running: bool
    model: str | None
    served_name: str | None
    detail: str
    exit_code: int | None = None
    incarnation: str = ""
    restarts_itself: bool = False


class Engine(Protocol):
    name: str
    read_only: bool

    def serve(self, *, model: str, served_name: str) -> None:
        """(Re)start vLLM on this model; returns once started, not once ready."""
        ...

    def stop(self) -> None: ...

    def state(self) -> EngineState: ...

"""Starting and stopping the simulator: uvicorn serving one Simulator, as vLLM serves itself."""

import time
from collections.abc import Callable
from typing import Any

import uvicorn

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.routes import Simulator


class _Server(uvicorn.Server):
    """uvicorn's server, calling back once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()


def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8001,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run the simulator until SIGTERM/SIGINT.

    Sleeps config.startup_delay first, before binding the socket, so that connections
    are refused while the "model loads", as with vLLM. on_listening is called once the
    socket accepts connections.
    """
    if config.startup_delay > 0:
        time.sleep(config.startup_delay)
    server_config = uvicorn.Config(
        Simulator(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    _Server(server_config, on_listening).run()

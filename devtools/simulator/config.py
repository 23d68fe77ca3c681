"""How a simulated vLLM behaves, and the fixed facts it reports about itself."""

from dataclasses import dataclass

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-sim"


@dataclass
class SimulatorConfig:
    """How the simulated vLLM behaves."""

    model: str = "demo-model"  # the served model name
    max_model_len: int = 512
    tokens: int = 16  # tokens generated when the request does not force more
    token_delay: float = 0.02  # seconds before each generated token
    startup_delay: float = 0.0  # seconds of "loading" before the socket is bound
    root: str | None = None  # what vLLM "loaded" (its --model), shown as the card's root
    # Tests only: a file that gets one line "<X-Request-Id>" per generation the simulator
    # started to answer (first response byte sent), written unbuffered so it survives a
    # SIGKILL: across restarts it shows whether a request was ever answered twice.
    answer_log: str | None = None
    # A fixed reply instead of the token cycle (one token per word with the whitespace
    # after it), so a client can be shown Markdown; `tokens` should be its length.
    reply: str | None = None

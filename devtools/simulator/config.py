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
    token_delay: float = 0.02  # seconds before each generated token, alone in the batch
    # Requests generated at once, as vLLM's --max-num-seqs (256 is its default on GPU);
    # more wait first come, first served (devtools.simulator.batch).
    max_num_seqs: int = 256
    # How much each other running request slows a token down: its delay is
    # token_delay * (1 + batch_slowdown * (running - 1)). 0 keeps it at token_delay.
    batch_slowdown: float = 0.0
    startup_delay: float = 0.0  # seconds of "loading" before the socket is bound
    root: str | None = None  # what vLLM "loaded" (its --model), shown as the card's root
    # Tests only: a file that gets one line "<X-Request-Id>" per generation the simulator
    # started to answer (first response byte sent), written unbuffered so it survives a
    # SIGKILL: across restarts it shows whether a request was ever answered twice.
    answer_log: str | None = None
    # A fixed reply instead of the token cycle (one token per word with the whitespace
    # after it), so a client can be shown Markdown; `tokens` should be its length.
    reply: str | None = None
    # Serve /v1/rerank and /v1/score as a pooling (cross-encoder) model does; without it
    # they are FastAPI's 404, as on vLLM serving a generate-only model.
    pooling: bool = False

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, not {self.max_num_seqs}")
        if self.batch_slowdown < 0:
            raise ValueError(f"batch_slowdown must not be negative, not {self.batch_slowdown}")

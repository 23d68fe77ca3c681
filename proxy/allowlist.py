"""Which of vLLM's routes the gateway forwards, and which it keeps out of reach.

The gateway forwards only the routes it has a view for (proxy/routers.py); everything
else under /v1 is its own 404, so a route vLLM adds is unreachable until someone decides
otherwise. This is that decision written down, for every route vLLM 0.32 has (its
/openapi.json, tests/wire/vllm-0.32/routes.txt) and the newer ones known to be
dangerous: tests fail on a vLLM route in neither list, so a new vLLM is looked at
before it is served (the real-vLLM lane reads the live server's list).
"""

# vLLM's path -> the gateway's route for it (the same path unless said).
FORWARDED = {
    "/v1/chat/completions": "POST /v1/chat/completions (and POST /api/chat)",
    "/v1/completions": "POST /v1/completions",
    "/v1/embeddings": "POST /v1/embeddings",
    "/v1/messages": "POST /v1/messages",
    "/v1/messages/count_tokens": "POST /v1/messages/count_tokens",
    "/v1/responses": "POST /v1/responses",
    "/v1/responses/{response_id}": "GET /v1/responses/{response_id} (the key's own)",
    "/v1/responses/{response_id}/cancel": "POST /v1/responses/{response_id}/cancel (the key's own)",
    "/v1/rerank": "POST /v1/rerank",
    "/v1/score": "POST /v1/score",
    "/v1/audio/transcriptions": "POST /v1/audio/transcriptions",
    "/tokenize": "POST /tokenize",
    "/detokenize": "POST /detokenize",
}

# vLLM's path -> why no client reaches it through the gateway.
BLOCKED = {
    # The gateway answers these itself, from what it knows of every backend.
    "/v1/models": "the gateway's own, the union of every backend's models (GET /v1/models)",
    "/health": "the gateway's own health (GET /api/healthz, /livez, /readyz)",
    "/ping": "vLLM's health for SageMaker; the gateway has its own",
    "/metrics": "the gateway's own metrics; vLLM's are read by its poller",
    "/version": "vLLM's version is shown in /api/healthz",
    "/load": "vLLM's load figure, read by the gateway's poller",
    # They change or stop the server, or act on other clients' requests.
    "/invocations": "SageMaker's catch-all: any request type, past the gateway's checks",
    "/v1/chat/completions/batch": "a batch of requests counted as one, past the limits",
    "/scale_elastic_ep": "rescales the server",
    "/is_scaling_elastic_ep": "the server's scaling state",
    "/kv_event_sources": "the KV cache's event sources, of every client",
    "/generative_scoring": "not exposed: scores under no usage accounting yet",
    "/v1/systemone": "not exposed: an experimental route",
    "/abort_requests": "aborts anyone's requests",
    "/v1/requests/{request_id}/cancel": "cancels anyone's request by its id",
    "/v1/requests/{request_id}": "anyone's request by its id",
    "/v1/load_lora_adapter": "loads an adapter into the shared server",
    "/v1/unload_lora_adapter": "unloads an adapter from the shared server",
    "/v1/audio/translations": "not exposed yet",
    "/rerank": "an alias: the gateway forwards /v1/rerank",
    "/v2/rerank": "an alias: the gateway forwards /v1/rerank",
    "/score": "an alias: the gateway forwards /v1/score",
    "/pooling": "not exposed: raw pooling outputs",
    "/classify": "not exposed yet",
    "/v1/chat/completions/render": "not exposed: the prompt a template renders",
    "/v1/completions/render": "not exposed: the prompt a template renders",
    "/sleep": "puts the server to sleep (dev mode)",
    "/wake_up": "wakes the server (dev mode)",
    "/is_sleeping": "the server's sleep state (dev mode)",
    "/reset_prefix_cache": "empties the shared prefix cache (dev mode)",
    "/collective_rpc": "runs a method on every worker (dev mode)",
    "/start_profile": "starts the profiler",
    "/stop_profile": "stops the profiler",
    "/server_info": "the server's configuration (dev mode)",
    "/update_weights": "changes the model's weights",
    "/pause": "pauses generation for everyone",
    "/resume": "resumes generation",
    "/is_paused": "the server's pause state",
}


def unclassified(paths: list[str]) -> list[str]:
    """The paths (vLLM's /openapi.json keys) in neither list: each needs a decision."""
    known = FORWARDED.keys() | BLOCKED.keys()
    return sorted(path for path in paths if path not in known and not path.startswith("/docs"))

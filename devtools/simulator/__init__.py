"""A stand-in for a vLLM 0.32 OpenAI-compatible server, for tests, demos and benchmarks.

TalkTuah is a gateway in front of vLLM; running a real vLLM needs a model and a lot of
memory, so this package fakes one: a raw ASGI application served by uvicorn, like vLLM
itself. Checked against real captures of vLLM 0.32.0 by tests/devtools/test_simulator*.py.

- config: `SimulatorConfig`, how it behaves (model, max_model_len, token counts, delays,
  max_num_seqs, batch_slowdown);
- batch: vLLM's batch as clients see it: at most ``max_num_seqs`` generations run at
  once, the others wait first come, first served (``vllm:num_requests_waiting``), and
  each token takes ``token_delay * (1 + batch_slowdown * (running - 1))``;
- routes: the HTTP side, ``/health``, ``/version``, ``/v1/models``, ``/metrics``,
  ``/v1/chat/completions``, ``/v1/completions`` and the APIs below with vLLM's headers
  and FastAPI's 404/405, one generation path for all of them, and aborting a
  generation as soon as its client disconnects (freeing its slot, or leaving the queue);
  for tests only, ``GET /sim/stats`` (running, waiting, peak_running, admitted) and
  ``POST /sim/stats/reset``;
- messages, responses: the Anthropic Messages API (``/v1/messages``, ``count_tokens``)
  and the OpenAI Responses API (``/v1/responses``, stored responses, background, cancel)
  in vLLM 0.32's shapes, on the same generation path as chat;
- tokenizer, pooling: ``/tokenize`` and ``/detokenize``; ``/v1/rerank`` and ``/v1/score``
  when started with ``--pooling`` (else FastAPI's 404, as vLLM with a generate-only model);
- asgi: reading bodies, sending responses, running work until the client disconnects;
- validation: the requests vLLM refuses, with its exact error bodies, all sent before
  any SSE byte, and what a valid one asks to generate;
- generation: deterministic tokens, ``token_delay`` apart, as vLLM's SSE chunks
  (``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``, with ``stream_options.include_usage``
  and ``continuous_usage_stats``) or one JSON response, field sets and order as vLLM's;
- metrics: vLLM's Prometheus families that matter to the gateway (running and waiting
  read from the batch), through prometheus_client as in vLLM, plus ``simulator_*``
  counters for tests;
- server: `serve`, uvicorn after a loading phase (``startup_delay``) during which
  connections are refused.

Run it with ``python manage.py vllm_simulator --model NAME --port P`` (add e.g.
``--max-num-seqs 4 --batch-slowdown 0.1`` for a busy vLLM).
"""

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.generation import generated_text, token_text
from devtools.simulator.routes import Simulator
from devtools.simulator.server import serve

__all__ = ["Simulator", "SimulatorConfig", "generated_text", "serve", "token_text"]

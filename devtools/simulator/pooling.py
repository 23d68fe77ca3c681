"""/v1/rerank and /v1/score of a pooling (cross-encoder) model, in vLLM 0.32's shapes
(RerankResponse, ScoreResponse), for a simulator started with --pooling. Without it they
are FastAPI's 404, as on a vLLM serving a generate-only model.

Scores are deterministic: the share of words two texts have in common,
(common + 1) / (all distinct + 1), so a document that repeats the query scores highest.
Tokens are words, as elsewhere in the simulator.
"""

import time
from typing import Any

import orjson

from devtools.simulator import validation
from devtools.simulator.config import SimulatorConfig


def similarity(a: str, b: str) -> float:
    words_a, words_b = set(a.lower().split()), set(b.lower().split())
    return (len(words_a & words_b) + 1) / (len(words_a | words_b) + 1)


def _texts(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        raise validation.validation_errors([validation.missing(f"body.{key}", body)])
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise validation.validation_errors([validation.wrong_type(f"body.{key}", value, str)])
    return items


def rerank(config: SimulatorConfig, body: dict[str, Any]) -> bytes:
    """POST /v1/rerank: {"query", "documents", "top_n"?} -> the documents by relevance."""
    query = body.get("query")
    if not isinstance(query, str):
        detail = (
            validation.missing("body.query", body)
            if query is None
            else validation.wrong_type("body.query", query, str)
        )
        raise validation.validation_errors([detail])
    documents = _texts(body, "documents")
    validation.check_model(body, config.model)
    top_n = validation.optional_int(body, "top_n") or 0
    scores = [similarity(query, doc) for doc in documents]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])  # ties keep their order
    results = [
        {
            "index": i,
            "document": {"text": documents[i], "multi_modal": None},
            "relevance_score": scores[i],
        }
        for i in order
    ]
    if top_n > 0:
        results = results[:top_n]
    tokens = sum(len(query.split()) + len(doc.split()) for doc in documents)
    return orjson.dumps(
        {
            "id": f"rerank-{validation.random_hex16()}",
            "model": config.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }
    )


def score(config: SimulatorConfig, body: dict[str, Any]) -> bytes:
    """POST /v1/score: {"text_1", "text_2"} (one against many, or pairwise)."""
    first, second = _texts(body, "text_1"), _texts(body, "text_2")
    validation.check_model(body, config.model)
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise validation.openai_error(
            400,
            "text_1 and text_2 must have the same length, or text_1 a single text.",
            "BadRequestError",
            None,
        )
    pairs = list(zip(first, second, strict=True))
    tokens = sum(len(a.split()) + len(b.split()) for a, b in pairs)
    return orjson.dumps(
        {
            "id": f"score-{validation.random_hex16()}",
            "object": "list",
            "created": int(time.time()),
            "model": config.model,
            "data": [
                {"index": i, "object": "score", "score": similarity(a, b)}
                for i, (a, b) in enumerate(pairs)
            ],
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )

"""The proxy's routes: the OpenAI-compatible surface (/v1) and the chat, model and usage
routes of TalkTuah's original API (/api). Views stay thin: authenticate (auth=), call
one service, return."""

from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from ninja import Query, Router, Schema
from pydantic import BaseModel, ConfigDict

from modelmgr.auth import inference_auth, principal_of
from proxy import accounting, bodies, forwarding

openai_router = Router(tags=["OpenAI-compatible"], auth=inference_auth)
api_router = Router(tags=["Chat (TalkTuah's original API)"], auth=inference_auth)
tokens_router = Router(tags=["Tokens (vLLM's own)"], auth=inference_auth)


# The bodies are relayed as-is (unknown fields kept), so they are documented, not parsed.
@openai_router.post("/chat/completions", openapi_extra=bodies.openapi_body(bodies.CHAT))
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """OpenAI chat completions, streamed (SSE) when `stream` is true."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.CHAT
    )


@openai_router.post("/completions", openapi_extra=bodies.openapi_body(bodies.COMPLETIONS))
async def completions(request: HttpRequest) -> HttpResponseBase:
    """OpenAI text completions, streamed (SSE) when `stream` is true."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.COMPLETIONS
    )


@openai_router.post("/embeddings", openapi_extra=bodies.openapi_body(bodies.EMBEDDINGS))
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    """OpenAI embeddings, when the served model supports them."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.EMBEDDINGS
    )


@openai_router.post("/messages", openapi_extra=bodies.openapi_body(bodies.MESSAGES))
async def messages(request: HttpRequest) -> HttpResponseBase:
    """Anthropic's Messages API (Claude Code, the anthropic SDKs: `x-api-key` or a bearer
    key), streamed with its named events when `stream` is true; errors in its shape."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.MESSAGES
    )


@openai_router.post(
    "/messages/count_tokens", openapi_extra=bodies.openapi_body(bodies.COUNT_TOKENS)
)
async def messages_count_tokens(request: HttpRequest) -> HttpResponseBase:
    """The input tokens a Messages API request would take."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.COUNT_TOKENS
    )


@openai_router.post("/responses", openapi_extra=bodies.openapi_body(bodies.RESPONSES))
async def responses(request: HttpRequest) -> HttpResponseBase:
    """OpenAI's Responses API (the Agents SDK, Codex), streamed when `stream` is true;
    `previous_response_id` may name only this key's own responses."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.RESPONSES
    )


@openai_router.get("/responses/{response_id}")
async def response_get(request: HttpRequest, response_id: str) -> HttpResponseBase:
    """A response this key created (vLLM's `?stream=true&starting_after=N` streams it
    again); another key's is a 404."""
    return await forwarding.forward_stored(
        request=request, principal=principal_of(request), response_id=response_id, cancel=False
    )


@openai_router.post("/responses/{response_id}/cancel")
async def response_cancel(request: HttpRequest, response_id: str) -> HttpResponseBase:
    """Cancel a background response this key created; another key's is a 404."""
    return await forwarding.forward_stored(
        request=request, principal=principal_of(request), response_id=response_id, cancel=True
    )


@openai_router.post("/rerank", openapi_extra=bodies.openapi_body(bodies.RERANK))
async def rerank(request: HttpRequest) -> HttpResponseBase:
    """Rerank documents against a query, when the served model is a reranker."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.RERANK
    )


@openai_router.post("/score", openapi_extra=bodies.openapi_body(bodies.SCORE))
async def score(request: HttpRequest) -> HttpResponseBase:
    """Score text pairs, when the served model is a cross-encoder or embedding model."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.SCORE
    )


@openai_router.post(
    "/audio/transcriptions", openapi_extra=bodies.openapi_body(bodies.TRANSCRIPTIONS)
)
async def audio_transcriptions(request: HttpRequest) -> HttpResponseBase:
    """Speech to text (a multipart upload, under the body size limit), when the served
    model transcribes."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.TRANSCRIPTIONS
    )


@tokens_router.post("/tokenize", openapi_extra=bodies.openapi_body(bodies.TOKENIZE))
async def tokenize(request: HttpRequest) -> HttpResponseBase:
    """The served model's tokens for a prompt or chat messages (vLLM's /tokenize)."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.TOKENIZE
    )


@tokens_router.post("/detokenize", openapi_extra=bodies.openapi_body(bodies.DETOKENIZE))
async def detokenize(request: HttpRequest) -> HttpResponseBase:
    """The text of a list of token ids (vLLM's /detokenize)."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.DETOKENIZE
    )


# pydantic models, not ninja Schemas: a Schema's validator drops the extra fields.
class ModelCardOut(BaseModel):
    """One of vLLM's model cards; its other fields (max_model_len, root, ...) pass through."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "model"


class ModelListOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: str = "list"
    data: list[ModelCardOut]


@openai_router.get("/models", response=ModelListOut)
async def models(request: HttpRequest) -> dict[str, Any]:
    """The models vLLM serves now that this key may use."""
    return await forwarding.list_models(principal_of(request))


@api_router.post("/chat", openapi_extra=bodies.openapi_body(bodies.API_CHAT))
async def api_chat(request: HttpRequest) -> HttpResponseBase:
    """Chat completion as TalkTuah's original API had it: streamed (SSE) unless `stream`
    is false."""
    return await forwarding.forward(
        request=request, principal=principal_of(request), endpoint=bodies.API_CHAT
    )


@api_router.get("/models", response=ModelListOut)
async def api_models(request: HttpRequest) -> dict[str, Any]:
    """The proxied model list (same as GET /v1/models)."""
    return await forwarding.list_models(principal_of(request))


class UsageRowOut(Schema):
    day: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class UsageTotalsOut(Schema):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class QuotaOut(Schema):
    scope: str  # "key" or "team"
    team: str | None  # the team's name, for a team's quota
    period: str  # "day" or "month" (calendar, in time_zone)
    limit: int  # prompt + completion tokens
    used: int | None  # used or held by requests in flight; null while the counts are away
    remaining: int | None
    resets_at: str  # ISO 8601, in time_zone
    time_zone: str


class KeyUsageOut(Schema):
    key: str  # the key's prefix
    name: str
    team: str | None
    days: int
    totals: UsageTotalsOut
    usage: list[UsageRowOut]
    quota: list[QuotaOut]  # the key's token quotas and its team's; empty: none


@api_router.get("/usage", response=KeyUsageOut)
async def usage_of_key(request: HttpRequest, days: int = Query(30, ge=1, le=366)) -> dict[str, Any]:
    """This key's own usage per model and day (requests, tokens, errors) and totals, and
    its token quotas (per day and month, its own and its team's): used, remaining and
    when each resets."""
    return await accounting.key_usage(principal_of(request), days=days)

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


class KeyUsageOut(Schema):
    key: str  # the key's prefix
    name: str
    days: int
    totals: UsageTotalsOut
    usage: list[UsageRowOut]


@api_router.get("/usage", response=KeyUsageOut)
async def usage_of_key(request: HttpRequest, days: int = Query(30, ge=1, le=366)) -> dict[str, Any]:
    """This key's own usage per model and day (requests, tokens, errors) and totals."""
    return await accounting.key_usage(principal_of(request), days=days)

"""Responses the Responses API stored: which key created each one and on which backend.

vLLM keeps a response it made (`store`, its default) in that one server's memory, and
answers GET /v1/responses/{id} and its cancel for anyone who knows the id. Through the
gateway a response belongs to the key that created it: another key is told it does not
exist (404, as for an id nobody made), and `previous_response_id` may name only the
key's own. The owner and backend of each id are kept in the cache (Redis in production,
so every worker and instance knows them) for RESPONSES_KEEP_SECONDS.
"""

import logging

from django.conf import settings
from django.core.cache import cache

from modelmgr.auth import Principal
from plumbing.errors import NotFound, ServiceUnavailable
from proxy.accounting import Call

log = logging.getLogger("talktuah.responses")

_PREFIX = "talktuah:response:"


class StoreUnavailable(ServiceUnavailable):
    code = "response_store_unavailable"


async def remember(call: Call) -> None:
    """Note that `call`'s key created `call.response_id` on `call.backend`. Best effort:
    the answer is not failed for it (the response then cannot be fetched back)."""
    if call.response_id is None:
        return
    try:
        await cache.aset(
            _PREFIX + call.response_id,
            f"{call.principal.prefix}\x00{call.backend}",
            timeout=settings.RESPONSES_KEEP_SECONDS,
        )
    except Exception as exc:  # the cache is away: Redis down, unreachable
        log.warning("could not record the owner of response %s: %r", call.response_id, exc)


async def backend_of(response_id: str, principal: Principal) -> str:
    """The backend holding `response_id`, when `principal`'s key created it; NotFound
    otherwise (an unknown id, another key's, or one older than RESPONSES_KEEP_SECONDS)."""
    try:
        found = await cache.aget(_PREFIX + response_id)
    except Exception as exc:
        log.warning("could not read the owner of response %s: %r", response_id, exc)
        raise StoreUnavailable(
            "The gateway's response store is unavailable; retry shortly.",
            headers={"Retry-After": "5"},
        ) from exc
    owner, _, backend = found.partition("\x00") if isinstance(found, str) else ("", "", "")
    if owner != principal.prefix or not backend:
        raise NotFound(
            f"Response with id '{response_id}' not found.",
            param="response_id",
            code="response_not_found",
        )
    return backend

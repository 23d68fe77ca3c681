"""The prefix-cache salt of a key.

vLLM reuses the KV cache of a prompt prefix it has seen, so a request that shares a
prefix with another's answers faster: timing its answers, one tenant can learn what
another sent. vLLM's `cache_salt` field keeps prefixes of different salts apart; the
gateway sets it on every request of a route that takes it, to a value secret to each
key (an HMAC of the key's prefix under SECRET_KEY: stable across workers and restarts,
unguessable without the secret), overriding whatever the client sent.
PREFIX_CACHE_ISOLATION=none turns this off, for a team whose keys may share the cache.
"""

import base64
import functools
import hashlib
import hmac

from django.conf import settings

from modelmgr.auth import Principal


def cache_salt(principal: Principal) -> str:
    return salt_of(principal.prefix)


def salt_of(prefix: str) -> str:
    """The salt of the key with this prefix."""
    return _salt(settings.SECRET_KEY, prefix)


@functools.lru_cache(maxsize=4096)
def _salt(secret: str, prefix: str) -> str:
    digest = hmac.new(secret.encode(), b"cache_salt\x00" + prefix.encode(), hashlib.sha256)
    # 43 characters of base64: vLLM's own advice for a salt (256 bits).
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

"""Writes of the backends' own rows (the admin, `manage.py backend` and the tests call
these): a vLLM API key is sealed before it is stored and never kept in plaintext."""

from typing import Any

from backends.models import Backend, EngineKind
from plumbing.secrets import seal


def backend_save(backend: Backend, *, api_key: str | None = None) -> Backend:
    """Save a backend (the admin and `backend_create` both come here); `api_key`, when
    given, replaces its vLLM API key ("" removes it), sealed before it is stored."""
    backend.base_url = backend.base_url.rstrip("/")
    if api_key is not None:
        backend.api_key_sealed = seal(api_key)
    backend.full_clean()
    backend.save()
    return backend


def backend_create(
    *,
    name: str,
    base_url: str,
    api_key: str = "",
    engine: str = EngineKind.EXTERNAL,
    engine_settings: dict[str, Any] | None = None,
    weight: int = 1,
    capacity: int | None = None,
    priority_scheduling: bool = False,
    enabled: bool = True,
    draining: bool = False,
) -> Backend:
    backend = Backend(
        name=name,
        base_url=base_url,
        engine=engine,
        engine_settings=engine_settings or {},
        weight=weight,
        capacity=capacity,
        priority_scheduling=priority_scheduling,
        enabled=enabled,
        draining=draining,
    )
    return backend_save(backend, api_key=api_key)

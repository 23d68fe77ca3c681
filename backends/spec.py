"""One backend as the rest of TalkTuah passes it along: a frozen `BackendSpec` (name,
upstream, engine and its settings, weight, draining), resolved once from its row (or
from VLLM_BASE_URL for `default`, or from a discovered pod) and the settings.

An engine's settings are the settings' values overlaid by the row's `engine_settings`
(`EngineConfig`), so a worker drives its backend's engine without writing to the global
settings, and two backends' engines can live in one process (the admin, tests)."""

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from backends.models import DEFAULT_BACKEND, Backend, EngineKind
from plumbing.errors import BadRequest, SecretUnreadable
from plumbing.secrets import unseal
from plumbing.vllm import Upstream

log = logging.getLogger("talktuah.backends")

# engine_settings keys (the settings' names) -> EngineConfig fields.
_ENGINE_FIELDS = {
    "ENGINE_PROCESS_COMMAND": "process_command",
    "ENGINE_STOP_GRACE_SECONDS": "stop_grace_seconds",
    "ENGINE_LOG_FILE": "log_file",
    "ENGINE_STATE_FILE": "state_file",
    "VLLM_PORT": "port",
    "VLLM_CONTAINER_NAME": "container_name",
    "VLLM_MODEL": "model",
    "SWITCH_TIMEOUT_SECONDS": "switch_timeout_seconds",
    "K8S_NAMESPACE": "k8s_namespace",
    "K8S_DEPLOYMENT": "k8s_deployment",
    "K8S_CONTAINER": "k8s_container",
}


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What runs one backend's vLLM and how (`modelmgr.engines.engine_for` builds it)."""

    kind: str
    process_command: str
    stop_grace_seconds: float
    log_file: str
    state_file: str
    port: int
    container_name: str
    model: str  # started when the worker starts (process engine); "" = none
    switch_timeout_seconds: float
    k8s_namespace: str
    k8s_deployment: str
    k8s_container: str

    @classmethod
    def from_settings(cls, *, kind: str | None = None, port: int | None = None) -> "EngineConfig":
        """The settings' engine: TALKTUAH_ENGINE and the ENGINE_*, VLLM_*, K8S_* values."""
        return cls(
            kind=kind or settings.TALKTUAH_ENGINE,
            process_command=str(settings.ENGINE_PROCESS_COMMAND),
            stop_grace_seconds=float(settings.ENGINE_STOP_GRACE_SECONDS),
            log_file=str(settings.ENGINE_LOG_FILE),
            state_file=str(settings.ENGINE_STATE_FILE),
            port=int(port or settings.VLLM_PORT),
            container_name=str(settings.VLLM_CONTAINER_NAME),
            model=str(settings.VLLM_MODEL),
            switch_timeout_seconds=float(settings.SWITCH_TIMEOUT_SECONDS),
            k8s_namespace=str(settings.K8S_NAMESPACE),
            k8s_deployment=str(settings.K8S_DEPLOYMENT),
            k8s_container=str(settings.K8S_CONTAINER),
        )

    def overlaid(self, overrides: dict[str, Any]) -> "EngineConfig":
        """This config with a row's `engine_settings` (settings' names) applied."""
        unknown = set(overrides) - set(_ENGINE_FIELDS)
        if unknown:
            raise BadRequest(
                f"engine settings a worker does not take: {', '.join(sorted(unknown))} "
                f"(it takes {', '.join(sorted(_ENGINE_FIELDS))})"
            )
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            attr = _ENGINE_FIELDS[name]
            current = getattr(self, attr)
            try:
                values[attr] = type(current)(value)
            except (TypeError, ValueError):
                raise BadRequest(
                    f"engine setting {name} is not a {type(current).__name__}: {value!r}"
                ) from None
        return _replace(self, values)

    @property
    def read_only(self) -> bool:
        return self.kind == EngineKind.EXTERNAL


def _replace(config: EngineConfig, values: dict[str, Any]) -> EngineConfig:
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return EngineConfig(**{**fields, **values})


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One vLLM backend: where it is, what runs it, its share of the traffic."""

    name: str
    upstream: Upstream
    engine: EngineConfig = field(compare=False)
    weight: int = 1
    draining: bool = False
    capacity: int = 0  # requests it runs at once (0: BACKEND_CAPACITY, resolved below)
    priority_scheduling: bool = False  # vLLM runs --scheduling-policy priority
    # `default` (VLLM_BASE_URL's, or a row of that name) is the one whose Hugging Face
    # cache is this host's; another backend's cache is what its worker reports.
    local_cache: bool = False

    @property
    def base_url(self) -> str:
        return self.upstream.base_url


def spec_of_row(row: Backend, *, strict: bool = False) -> BackendSpec:
    """A row's spec. Engine settings a worker cannot take (a row written around the
    admin's validation) fail `strict` callers (the worker) and are logged and left out
    for the others (routing does not need them)."""
    base_url = row.base_url.rstrip("/")
    engine = EngineConfig.from_settings(kind=row.engine, port=_port_of(base_url))
    try:
        engine = engine.overlaid(dict(row.engine_settings))
    except BadRequest as exc:
        if strict:
            raise BadRequest(f"Backend '{row.name}' has {exc.message}.") from None
        log.error("backend %s: %s; they are ignored", row.name, exc.message)
    return BackendSpec(
        name=row.name,
        upstream=Upstream(row.name, base_url, api_key_of(row)),
        engine=engine,
        weight=max(row.weight, 1),
        draining=row.draining,
        capacity=row.capacity or settings.BACKEND_CAPACITY,
        priority_scheduling=row.priority_scheduling,
        local_cache=row.name == DEFAULT_BACKEND,
    )


def default_spec() -> BackendSpec:
    """The backend VLLM_BASE_URL and VLLM_API_KEY describe, with the settings' engine."""
    return BackendSpec(
        name=DEFAULT_BACKEND,
        upstream=Upstream(DEFAULT_BACKEND, settings.VLLM_BASE_URL, settings.VLLM_API_KEY),
        engine=EngineConfig.from_settings(),
        capacity=settings.BACKEND_CAPACITY,
        priority_scheduling=settings.VLLM_PRIORITY_SCHEDULING,
        local_cache=True,
    )


def pod_spec(name: str, ip: str) -> BackendSpec:
    """A discovered vLLM pod: routed to, never switched on its own (its Deployment is)."""
    upstream = Upstream(name, f"http://{ip}:{settings.K8S_BACKEND_PORT}", settings.VLLM_API_KEY)
    return BackendSpec(
        name=name,
        upstream=upstream,
        engine=EngineConfig.from_settings(kind=EngineKind.EXTERNAL),
        capacity=settings.BACKEND_CAPACITY,
        priority_scheduling=settings.VLLM_PRIORITY_SCHEDULING,
    )


def _port_of(base_url: str) -> int | None:
    try:
        return urlsplit(base_url).port
    except ValueError:
        return None


def api_key_of(row: Backend) -> str:
    """The row's vLLM API key, unsealed for the process's memory only. A key that no
    longer opens (SECRET_KEY changed) is logged and sent as none, so the backend answers
    401 rather than the gateway 500."""
    try:
        return unseal(row.api_key_sealed)
    except SecretUnreadable as exc:
        log.error("backend %s: %s", row.name, exc.message)
        return ""

"""The vLLM backends the gateway routes to, as the database keeps them: one row per
server (its address, sealed API key, engine and engine settings, weight, draining).
`VLLM_BASE_URL` adds the backend named `default` when no row takes that name
(`backends.discovery`); the frozen `BackendSpec` the rest of TalkTuah passes along is
built from a row and the settings in `backends.spec`."""

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models


class EngineKind(models.TextChoices):
    EXTERNAL = "external", "external (TalkTuah does not start or stop it)"
    PROCESS = "process", "process (a vLLM process on the worker's host)"
    DOCKER = "docker", "docker (a vLLM container on the worker's host)"
    KUBERNETES = "kubernetes", "kubernetes (a Deployment, patched and rolled out)"


DEFAULT_BACKEND = "default"  # the backend VLLM_BASE_URL describes when no row has its name

# The settings a backend's `engine_settings` may set for its worker.
ENGINE_SETTINGS = frozenset(
    {
        "ENGINE_PROCESS_COMMAND",
        "ENGINE_STOP_GRACE_SECONDS",
        "ENGINE_LOG_FILE",
        "ENGINE_STATE_FILE",
        "VLLM_PORT",
        "VLLM_CONTAINER_NAME",
        "VLLM_MODEL",
        "SWITCH_TIMEOUT_SECONDS",
        "K8S_NAMESPACE",
        "K8S_DEPLOYMENT",
        "K8S_CONTAINER",
    }
)


def validate_base_url(value: str) -> None:
    """http(s)://host[:port][/prefix], where host may be a bare name (a container, a
    Kubernetes service), which Django's URLValidator refuses."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValidationError("Enter vLLM's address as http://host:port (https also works).")
    if parts.query or parts.fragment or parts.path.rstrip("/").endswith("/v1"):
        raise ValidationError("Enter vLLM's address without /v1, a query or a fragment.")


class Backend(models.Model):
    """One vLLM server the gateway routes to. Its models are learned from its
    /v1/models, not configured here."""

    name = models.SlugField(
        max_length=50, unique=True, help_text="Used in ?backend=, metrics and logs."
    )
    base_url = models.CharField(
        max_length=300,
        validators=[validate_base_url],
        help_text="vLLM's address, without /v1, e.g. http://gpu-2:8000",
    )
    api_key_sealed = models.TextField(
        blank=True,
        editable=False,
        help_text="vLLM's --api-key, sealed under SECRET_KEY (never stored in plaintext).",
    )
    engine = models.CharField(
        max_length=20,
        choices=EngineKind.choices,
        default=EngineKind.EXTERNAL,
        help_text="What runs this vLLM, for switches driven by `run_worker --backend`.",
    )
    engine_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text='Overrides of the engine settings for this backend, e.g. {"VLLM_PORT": 8002}.',
    )
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Share of the traffic among replicas of a model (relative)."
    )
    capacity = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests it runs at once (vLLM's --max-num-seqs, or fewer when its KV "
        "cache fills first); beyond, requests wait in the gateway, fairly. Empty = the "
        "BACKEND_CAPACITY setting.",
    )
    priority_scheduling = models.BooleanField(
        default=False,
        help_text="vLLM runs with --scheduling-policy priority: the gateway sets each "
        "request's `priority` from its key's tier (a client's own is always dropped).",
    )
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(
        default=False,
        help_text="Takes no new requests; those in flight finish.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # The table kept its name when the model moved here from modelmgr.
        db_table = "modelmgr_backend"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_sealed)

    def clean(self) -> None:
        if not isinstance(self.engine_settings, dict):
            raise ValidationError({"engine_settings": "A JSON object of settings."})
        unknown = set(self.engine_settings) - ENGINE_SETTINGS
        if unknown:
            raise ValidationError(
                {
                    "engine_settings": f"Not an engine setting: {', '.join(sorted(unknown))} "
                    f"(these are: {', '.join(sorted(ENGINE_SETTINGS))})."
                }
            )

"""Which backends there are: the enabled `Backend` rows, plus VLLM_BASE_URL's `default`
unless a row takes that name (with BACKEND_DISCOVERY=kubernetes: the ready pods instead
of VLLM_BASE_URL's). Every reader (the pool, the admin, the management routes, the
worker) asks here, so they all see the same list in the same order."""

from django.conf import settings

from backends.models import DEFAULT_BACKEND, Backend
from backends.spec import BackendSpec, default_spec, pod_spec, spec_of_row
from plumbing import kube
from plumbing.errors import BackendNotFound, BadRequest


def row_specs() -> list[BackendSpec]:
    """The enabled rows, by name. Synchronous: it reads the database."""
    return [spec_of_row(row) for row in Backend.objects.filter(enabled=True).order_by("name")]


def with_default(rows: list[BackendSpec], pods: list[kube.Pod] | None = None) -> list[BackendSpec]:
    """The rows plus VLLM_BASE_URL's `default` first (unless a row is named so), or the
    usable discovered pods after the rows when `pods` is given."""
    if pods is not None:
        return rows + [pod_spec(pod.name, pod.ip) for pod in pods if pod.usable and pod.ip]
    if settings.VLLM_BASE_URL and not any(spec.name == DEFAULT_BACKEND for spec in rows):
        return [default_spec(), *rows]
    return rows


def backend_specs() -> list[BackendSpec]:
    """Every backend that can be managed: the rows and `default` (pods are routed to but
    not managed one by one: their Deployment is)."""
    return with_default(row_specs())


def backend_get(name: str) -> BackendSpec:
    """The backend of that name (enabled or not: a worker may drive a disabled one),
    its engine settings checked."""
    if name == DEFAULT_BACKEND and not Backend.objects.filter(name=name).exists():
        return default_spec()
    row = Backend.objects.filter(name=name).first()
    if row is None:
        raise BackendNotFound(f"There is no backend named '{name}': add it first.")
    return spec_of_row(row, strict=True)


def backend_resolve(name: str | None) -> BackendSpec:
    """The backend a management request is about: `name`, or the only one."""
    specs = backend_specs()
    names = ", ".join(spec.name for spec in specs)
    if not name:
        if len(specs) == 1:
            return specs[0]
        raise BadRequest(
            f"Several backends serve models; name one with ?backend= ({names}).",
            param="backend",
        )
    found = next((spec for spec in specs if spec.name == name), None)
    if found is None:
        raise BackendNotFound(
            f"There is no enabled backend named '{name}' (there are: {names}).",
            param="backend",
        )
    return found

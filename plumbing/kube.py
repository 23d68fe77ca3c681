"""The Kubernetes adapter: the only module that imports the `kubernetes` client.

Two uses: the gateway discovers its vLLM backends as the ready pods matching a label
selector (list, then watch, the way vLLM production-stack's router does), and the
kubernetes engine switches a model by patching its Deployment's container arguments
and following the rollout. Configuration comes from KUBECONFIG when it is set, else
from the pod's service account (in a cluster), else from ~/.kube/config.
"""

import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from plumbing.errors import EngineError

log = logging.getLogger("talktuah.kubernetes")

GONE = 410  # a watch's resourceVersion is too old: list again


def api_client() -> client.ApiClient:
    """A client configured from KUBECONFIG, the service account or ~/.kube/config."""
    configuration = client.Configuration()
    if settings.KUBECONFIG:
        config.load_kube_config(config_file=settings.KUBECONFIG, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


# --- backend discovery -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    ip: str | None
    ready: bool
    terminating: bool

    @property
    def usable(self) -> bool:
        return self.ready and not self.terminating and bool(self.ip)


def pod_of(found: Any) -> Pod:
    conditions = (found.status.conditions if found.status else None) or []
    return Pod(
        name=found.metadata.name,
        ip=found.status.pod_ip if found.status else None,
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        terminating=found.metadata.deletion_timestamp is not None,
    )


class PodWatcher:
    """The pods matching a label selector in a namespace, kept current by a daemon
    thread (list, then watch from that list's resourceVersion; list again when the
    watch ends or expires). `version` grows on every change, so readers can tell
    cheaply whether to look again."""

    def __init__(self, namespace: str, selector: str, *, api: client.ApiClient | None = None):
        self.namespace = namespace
        self.selector = selector
        self._api = api
        self._pods: dict[str, Pod] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self.version = 0
        self.synced = threading.Event()  # set once the first list arrived
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="pod-watcher", daemon=True)

    def start(self) -> "PodWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def pods(self) -> list[Pod]:
        with self._lock:
            return sorted(self._pods.values(), key=lambda pod: pod.name)

    def _set(self, pods: dict[str, Pod]) -> None:
        with self._lock:
            if pods != self._pods:
                self._pods = pods
                self.version += 1

    def _put(self, kind: str, pod: Pod) -> None:
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(pod.name, None)
            else:
                self._pods[pod.name] = pod
            self.version += 1

    def _run(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                core = client.CoreV1Api(self._api or api_client())
                listed = core.list_namespaced_pod(self.namespace, label_selector=self.selector)
                self._set({pod.name: pod for pod in map(pod_of, listed.items)})
                self.synced.set()
                self.error, delay = None, 0.5
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=listed.metadata.resource_version if listed.metadata else None,
                    timeout_seconds=int(settings.K8S_WATCH_SECONDS),
                    allow_watch_bookmarks=True,
                ):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._put(event["type"], pod_of(event["object"]))
                    if self._stopped.is_set():
                        break
            except ApiException as exc:
                if exc.status == GONE:
                    continue  # the list is too old: list again at once
                self._failed(f"the API server answered {exc.status}: {exc.reason}")
            except (Urllib3Error, OSError, config.ConfigException) as exc:
                self._failed(f"{exc.__class__.__name__}: {exc}")
            else:
                continue
            self._stopped.wait(delay)
            delay = min(delay * 2, 10.0)

    def _failed(self, reason: str) -> None:
        if self.error != reason:
            log.warning(
                "watching pods %s in %s failed (%s); keeping the last known pods",
                self.selector,
                self.namespace,
                reason,
            )
        self.error = reason


_watcher: PodWatcher | None = None
_watcher_lock = threading.Lock()


def pod_watcher() -> PodWatcher:
    """The process's watcher of the backend pods (K8S_NAMESPACE, K8S_BACKEND_SELECTOR),
    started on first use; a new one when those settings changed."""
    global _watcher
    with _watcher_lock:
        wanted = (settings.K8S_NAMESPACE, settings.K8S_BACKEND_SELECTOR)
        if _watcher is None or (_watcher.namespace, _watcher.selector) != wanted:
            if _watcher is not None:
                _watcher.stop()
            _watcher = PodWatcher(*wanted).start()
        return _watcher


def forget_pod_watcher() -> None:
    global _watcher
    with _watcher_lock:
        if _watcher is not None:
            _watcher.stop()
        _watcher = None


# --- the kubernetes engine's Deployment --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rollout:
    """What a Deployment runs and how far its rollout is."""

    command: list[str]
    args: list[str]
    replicas: int
    available: int
    updated: int
    done: bool
    stalled: bool  # past the Deployment's progressDeadlineSeconds
    detail: str


@dataclass(frozen=True, slots=True)
class Deployment:
    """The vLLM Deployment a kubernetes engine switches: where it is, its container."""

    namespace: str
    name: str
    container: str


def _apps() -> client.AppsV1Api:
    return client.AppsV1Api(api_client())


def _engine_error(deployment: Deployment, action: str, exc: Exception) -> EngineError:
    where = f"Deployment {deployment.namespace}/{deployment.name}"
    if isinstance(exc, ApiException):
        if exc.status == 404:
            return EngineError(f"{where} does not exist: create it (see deploy/kubernetes).")
        if exc.status in (401, 403):
            return EngineError(
                f"Kubernetes refused to {action} {where} ({exc.status}): the worker's "
                "service account needs get/patch on deployments (see deploy/kubernetes)."
            )
        return EngineError(f"could not {action} {where}: {exc.status} {exc.reason}")
    return EngineError(f"could not {action} {where}: the API server is unreachable ({exc})")


def _container(wanted: Deployment, deployment: Any) -> Any:
    containers = deployment.spec.template.spec.containers
    for container in containers:
        if container.name == wanted.container:
            return container
    names = ", ".join(c.name for c in containers)
    raise EngineError(
        f"Deployment {wanted.name} has no container '{wanted.container}' "
        f"(it has: {names}); set K8S_CONTAINER."
    )


def rollout(wanted: Deployment) -> Rollout:
    try:
        deployment = _apps().read_namespaced_deployment(wanted.name, wanted.namespace)
    except (ApiException, Urllib3Error, OSError) as exc:
        raise _engine_error(wanted, "read", exc) from exc
    container = _container(wanted, deployment)
    status = deployment.status
    replicas = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    updated = (status.updated_replicas if status else None) or 0
    available = (status.available_replicas if status else None) or 0
    observed = (status.observed_generation if status else None) or 0
    stalled = next(
        (
            c.message or c.reason
            for c in ((status.conditions if status else None) or [])
            if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded"
        ),
        None,
    )
    done = (
        observed >= ((deployment.metadata.generation if deployment.metadata else 0) or 0)
        and updated == replicas
        and available == replicas
        and ((status.replicas if status else None) or 0) == replicas
    )
    detail = stalled or f"{updated}/{replicas} updated, {available}/{replicas} available"
    return Rollout(
        command=list(container.command or []),
        args=list(container.args or []),
        replicas=replicas,
        available=available,
        updated=updated,
        done=done,
        stalled=stalled is not None,
        detail=detail,
    )


def set_args(wanted: Deployment, args: list[str]) -> None:
    """Replace the vLLM container's arguments (a new rollout starts)."""
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": wanted.container, "args": args}]}}}
    }
    try:
        _apps().patch_namespaced_deployment(wanted.name, wanted.namespace, patch)
    except (ApiException, Urllib3Error, OSError) as exc:
        raise _engine_error(wanted, "patch", exc) from exc


def restart(wanted: Deployment) -> None:
    """Replace every pod with a new one, as `kubectl rollout restart` does: a new
    annotation on the pod template starts a rollout of the same spec."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    patch = {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}
        }
    }
    try:
        _apps().patch_namespaced_deployment(wanted.name, wanted.namespace, patch)
    except (ApiException, Urllib3Error, OSError) as exc:
        raise _engine_error(wanted, "restart", exc) from exc


def scale(wanted: Deployment, replicas: int) -> None:
    try:
        _apps().patch_namespaced_deployment_scale(
            wanted.name, wanted.namespace, {"spec": {"replicas": replicas}}
        )
    except (ApiException, Urllib3Error, OSError) as exc:
        raise _engine_error(wanted, "scale", exc) from exc


def wait_rollout(wanted: Deployment, timeout: float) -> Rollout:
    """Follow the rollout until it is done; EngineError when it stalls or times out."""
    deadline = time.monotonic() + timeout
    while True:
        found = rollout(wanted)
        if found.done:
            return found
        if found.stalled or time.monotonic() >= deadline:
            raise EngineError(f"the rollout of {wanted.name} did not finish: {found.detail}")
        time.sleep(0.5)

"""The engine controller: starts, stops and inspects vLLM, whatever runs it.

`engine_for(spec)` builds one of four engines from a backend's spec (its engine kind and
settings: `backends.spec.EngineConfig`), one module each (as httpx keeps one module per
transport):

* ``process`` (`process.ProcessEngine`): vLLM (by default the in-repo simulator) as a
  child process on this host, its pid and model recorded in a state file so that a
  restarted worker (or any other process) knows what runs;
* ``docker`` (`docker.DockerEngine`): the vLLM container, recreated with the new model
  and otherwise the same settings (image, entrypoint, GPUs, volumes, ports,
  networks...; the rewriting is in `vllm_args` and `docker_args`);
* ``kubernetes`` (`kubernetes.KubernetesEngine`): vLLM is a Deployment whose container
  arguments are patched, then the rollout followed;
* ``external`` (`external.ExternalEngine`): vLLM is managed elsewhere; read-only.

`Engine.serve()` returns once vLLM has been *started*, not once it is ready: loading a
model takes minutes, and readiness is vLLM's to tell (the caller polls `/health` and
`/v1/models`, and `state()` to notice a crash). Everything here is synchronous: the
worker calls it. This package is the only importer of the docker SDK and of psutil,
and every failure leaves it as a `plumbing.errors.EngineError` whose message a person
understands.
"""

from collections.abc import Callable

from backends.spec import BackendSpec, EngineConfig
from modelmgr.engines.base import Engine, EngineState
from modelmgr.engines.docker import DockerEngine
from modelmgr.engines.external import ExternalEngine
from modelmgr.engines.kubernetes import KubernetesEngine
from modelmgr.engines.process import ProcessEngine
from plumbing.errors import EngineError

__all__ = [
    "DockerEngine",
    "Engine",
    "EngineState",
    "ExternalEngine",
    "KubernetesEngine",
    "ProcessEngine",
    "engine_for",
    "engine_of",
]

ENGINES: dict[str, Callable[[EngineConfig], Engine]] = {
    "process": ProcessEngine,
    "docker": DockerEngine,
    "kubernetes": KubernetesEngine,
    "external": ExternalEngine,
}


def engine_of(config: EngineConfig) -> Engine:
    """The engine `config.kind` names (process, docker, kubernetes or external)."""
    if config.kind not in ENGINES:
        raise EngineError(
            f"unknown engine {config.kind!r}: use one of {', '.join(sorted(ENGINES))}"
        )
    return ENGINES[config.kind](config)


def engine_for(spec: BackendSpec) -> Engine:
    """The engine that runs a backend's vLLM, built from its spec."""
    return engine_of(spec.engine)

"""The engine controller: starts, stops and inspects vLLM, whatever runs it.

`get_engine()` picks one of four engines by `settings.TALKTUAH_ENGINE`, one module
each (as httpx keeps one module per transport):

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

from django.conf import settings

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
    "get_engine",
]

ENGINES: dict[str, type[Engine]] = {
    "process": ProcessEngine,
    "docker": DockerEngine,
    "kubernetes": KubernetesEngine,
    "external": ExternalEngine,
}


def get_engine() -> Engine:
    """The engine named by settings.TALKTUAH_ENGINE (process, docker, kubernetes or
    external)."""
    name = settings.TALKTUAH_ENGINE
    if name not in ENGINES:
        raise EngineError(
            f"unknown TALKTUAH_ENGINE {name!r}: use one of {', '.join(sorted(ENGINES))}"
        )
    return ENGINES[name]()

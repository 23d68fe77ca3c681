"""The kubernetes engine: vLLM is a Deployment (K8S_NAMESPACE/K8S_DEPLOYMENT, container
K8S_CONTAINER); a switch patches the container's `--model` and `--served-model-name`
and follows the rollout until every replica runs the new model. The Deployment is the
backend's unit: all its replicas serve the same model."""

from backends.spec import EngineConfig
from modelmgr.engines.base import EngineState
from modelmgr.engines.vllm_args import args_with_model, model_from_args
from plumbing import kube


class KubernetesEngine:
    name = "kubernetes"
    read_only = False

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.deployment = kube.Deployment(
            namespace=config.k8s_namespace,
            name=config.k8s_deployment,
            container=config.k8s_container,
        )

    def serve(self, *, model: str, served_name: str) -> None:
        """Patch the arguments and wait for the rollout (bounded by
        SWITCH_TIMEOUT_SECONDS): until then old and new pods would both answer. The
        model it already serves is served again by new pods (a restart: a rollout
        restart, as `kubectl rollout restart`)."""
        current = kube.rollout(self.deployment)
        args = args_with_model(current.command, current.args, model=model, served_name=served_name)
        if args != current.args:
            kube.set_args(self.deployment, args)
        elif current.replicas > 0:
            kube.restart(self.deployment)
        if current.replicas == 0:
            kube.scale(self.deployment, 1)
        kube.wait_rollout(self.deployment, self.config.switch_timeout_seconds)

    def stop(self) -> None:
        """Scale the Deployment to zero replicas."""
        kube.scale(self.deployment, 0)

    def state(self) -> EngineState:
        found = kube.rollout(self.deployment)
        model, served_name = model_from_args(found.command, found.args)
        return EngineState(
            running=found.available > 0,
            model=model,
            served_name=served_name,
            detail=f"Deployment {self.deployment.name}: {found.detail}",
            # The kubelet restarts a crashed container and the ReplicaSet replaces a lost
            # pod: a Deployment that wants replicas brings vLLM back by itself.
            restarts_itself=found.replicas > 0,
        )

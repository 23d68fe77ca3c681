"""The kubernetes engine against the fake API server (tests/fake_kube_api.py) through the
official client: a switch patches only the vLLM container's model arguments and returns
once the rollout is done; a stalled rollout, a missing Deployment and a refusal are
errors a person understands; the worker's supervision records a Deployment that lost its
pods and leaves bringing them back to Kubernetes."""

from collections.abc import Iterator
from typing import Any

import pytest

from backends.spec import EngineConfig, default_spec
from modelmgr.engines import KubernetesEngine, engine_for
from modelmgr.engines.supervisor import CameBack, Crashed, RestartPolicy, Supervisor
from plumbing.errors import EngineError
from tests.fake_kube_api import FakeKubeAPI, deployment


@pytest.fixture
def api(settings: Any, tmp_path: Any) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI().start()
    fake.deployments["vllm"] = deployment(
        "vllm",
        args=["--model", "/models/a", "--served-model-name", "org/a", "--max-model-len", "4096"],
    )
    settings.TALKTUAH_ENGINE = "kubernetes"
    settings.KUBECONFIG = str(fake.kubeconfig(tmp_path))
    settings.K8S_NAMESPACE = fake.namespace
    settings.K8S_DEPLOYMENT = "vllm"
    settings.K8S_CONTAINER = "vllm"
    settings.SWITCH_TIMEOUT_SECONDS = 5
    yield fake
    fake.stop()


def test_it_reads_what_the_deployment_serves(api: FakeKubeAPI) -> None:
    engine = engine_for(default_spec())
    assert isinstance(engine, KubernetesEngine) and not engine.read_only
    state = engine.state()
    assert (state.running, state.model, state.served_name) == (True, "/models/a", "org/a")
    assert "1/1 available" in state.detail


def test_a_switch_patches_the_args_and_waits_for_the_rollout(api: FakeKubeAPI) -> None:
    api.rollout_seconds = 0.5
    KubernetesEngine(EngineConfig.from_settings()).serve(model="/models/b", served_name="org/b")
    [patch] = api.patches
    [container] = patch["body"]["spec"]["template"]["spec"]["containers"]
    assert container == {
        "name": "vllm",
        "args": ["--model", "/models/b", "--served-model-name", "org/b", "--max-model-len", "4096"],
    }
    found = api.deployments["vllm"]
    # serve() returned only after the rollout: the new generation is observed and ready.
    assert found["status"]["observedGeneration"] == found["metadata"]["generation"] == 2
    sidecar = found["spec"]["template"]["spec"]["containers"][0]
    assert sidecar["args"] == ["sleep", "inf"]  # the other container is untouched
    assert KubernetesEngine(EngineConfig.from_settings()).state().served_name == "org/b"


def test_serving_the_model_it_serves_restarts_its_pods(api: FakeKubeAPI) -> None:
    # What a restart (the admin's action, POST /api/restart-engine, the supervisor) asks.
    api.rollout_seconds = 0.3
    engine = KubernetesEngine(EngineConfig.from_settings())
    engine.serve(model="/models/a", served_name="org/a")
    [patch] = api.patches
    template = patch["body"]["spec"]["template"]
    assert "spec" not in template  # the arguments stay as they are
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
    found = api.deployments["vllm"]
    assert found["status"]["observedGeneration"] == found["metadata"]["generation"] == 2
    assert engine.state().served_name == "org/a"


def test_a_stalled_rollout_is_an_error(api: FakeKubeAPI) -> None:
    api.stall = True
    with pytest.raises(EngineError, match=r"did not finish: ReplicaSet .* timed out progressing"):
        KubernetesEngine(EngineConfig.from_settings()).serve(model="/models/b", served_name="org/b")


def test_stop_scales_to_zero_and_serve_scales_back(api: FakeKubeAPI) -> None:
    engine = KubernetesEngine(EngineConfig.from_settings())
    engine.stop()
    assert api.deployments["vllm"]["spec"]["replicas"] == 0
    assert api.patches[-1]["path"].endswith("/deployments/vllm/scale")
    engine.serve(model="/models/a", served_name="org/a")
    assert api.deployments["vllm"]["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda api, s: setattr(s, "K8S_DEPLOYMENT", "nope"), "talktuah/nope does not exist"),
        (lambda api, s: setattr(s, "K8S_CONTAINER", "llm"), r"no container 'llm'.*vllm"),
        (lambda api, s: setattr(api, "refuse", 403), "service account needs get/patch"),
    ],
)
def test_its_errors_say_what_to_do(
    api: FakeKubeAPI, settings: Any, setup: Any, message: str
) -> None:
    setup(api, settings)
    with pytest.raises(EngineError, match=message):
        KubernetesEngine(EngineConfig.from_settings()).serve(model="/models/b", served_name="org/b")


def test_an_unreachable_api_server_is_an_engine_error(api: FakeKubeAPI) -> None:
    api.stop()
    with pytest.raises(EngineError, match="unreachable"):
        KubernetesEngine(EngineConfig.from_settings()).state()


def test_the_supervisor_records_a_deployment_without_pods_and_leaves_it_to_kubernetes(
    api: FakeKubeAPI,
) -> None:
    # The kubelet restarts a crashed vLLM container, the ReplicaSet replaces a lost pod:
    # the worker records the crash and the coming back, and restarts nothing itself.
    now = [0.0]
    supervisor = Supervisor(
        KubernetesEngine(EngineConfig.from_settings()),
        RestartPolicy("always", 1.0, 60.0, 0, 30.0),
        probe=lambda: (True, "ok"),
        start_grace=5,
        clock=lambda: now[0],
    )
    assert supervisor.check() == []
    assert supervisor.watched is not None and supervisor.watched.served_name == "org/a"
    api.deployments["vllm"]["status"]["availableReplicas"] = 0  # its pod crashed
    [crashed] = supervisor.check()
    assert isinstance(crashed, Crashed) and crashed.served_name == "org/a"
    assert crashed.restart_in is None and crashed.reason == "what runs it restarts it"
    assert "0/1 available" in crashed.detail
    now[0] = 100.0
    assert supervisor.check() == []  # no restart of its own, however long it takes
    api.deployments["vllm"]["status"]["availableReplicas"] = 1
    [back] = supervisor.check()
    assert isinstance(back, CameBack) and back.served_name == "org/a"
    assert not api.patches  # nothing was patched or scaled

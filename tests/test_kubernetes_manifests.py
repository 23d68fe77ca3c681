"""deploy/kubernetes/talktuah.yaml, checked against what the code needs: the gateway
discovers exactly the vLLM pods, on their port; the worker patches the Deployment and
container the settings name; the Role grants every call plumbing/kube.py makes; every
setting the manifests set is one TalkTuah reads; the vLLM arguments are ones the
kubernetes engine can rewrite."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelmgr.engines.vllm_args import args_with_model, model_from_args

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kubernetes" / "talktuah.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def env_of(objects: dict[tuple[str, str], Any], deployment: str) -> dict[str, str]:
    """A container's environment: its ConfigMap's data, then its own env."""
    container = objects["Deployment", deployment]["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= objects["ConfigMap", source["configMapRef"]["name"]]["data"]
    env |= {item["name"]: item.get("value", "") for item in container.get("env", [])}
    return env


def test_the_gateway_discovers_exactly_the_vllm_pods(objects: Any) -> None:
    env = env_of(objects, "gateway")
    assert env["BACKEND_DISCOVERY"] == "kubernetes"
    vllm = objects["Deployment", "vllm"]
    labels = vllm["spec"]["template"]["metadata"]["labels"]
    wanted = dict(part.split("=", 1) for part in env["K8S_BACKEND_SELECTOR"].split(","))
    assert wanted.items() <= labels.items()
    for (kind, name), doc in objects.items():  # and no other pods
        if kind == "Deployment" and name != "vllm":
            assert not wanted.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert int(env["K8S_BACKEND_PORT"]) == container["ports"][0]["containerPort"]
    port_arg = container["args"][container["args"].index("--port") + 1]
    assert int(port_arg) == int(env["K8S_BACKEND_PORT"])


def test_the_worker_drives_the_vllm_deployment(objects: Any) -> None:
    env = env_of(objects, "worker")
    assert env["TALKTUAH_ENGINE"] == "kubernetes"
    target = objects["Deployment", env["K8S_DEPLOYMENT"]]
    containers = target["spec"]["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == env["K8S_CONTAINER"]]
    model, served = model_from_args(["vllm", "serve"], container["args"])
    assert model and served
    rewritten = args_with_model(["vllm", "serve"], container["args"], model="/m/b", served_name="b")
    assert model_from_args(["vllm", "serve"], rewritten) == ("/m/b", "b")
    # The cache the worker downloads into is the one vLLM reads, at the same path.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    worker = objects["Deployment", "worker"]["spec"]["template"]["spec"]["containers"][0]
    assert {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}["hf-cache"] == mounts[
        "hf-cache"
    ]
    assert env["HF_HOME"] == mounts["hf-cache"]


def test_the_role_grants_what_the_code_calls(objects: Any) -> None:
    rules = objects["Role", "talktuah"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments/scale", "patch"),
    }
    assert needed <= granted
    for deployment in ("gateway", "worker"):
        spec = objects["Deployment", deployment]["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == "talktuah"
    binding = objects["RoleBinding", "talktuah"]
    assert binding["subjects"][0]["name"] == "talktuah"


def test_every_setting_the_manifests_set_is_documented(objects: Any) -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M)
    )
    set_here = set()
    for deployment in ("gateway", "worker"):
        set_here |= set(env_of(objects, deployment))
    # HF_HOME and PROMETHEUS_MULTIPROC_DIR are read by huggingface_hub and prometheus_client.
    assert set_here - documented <= {"HF_HOME", "PROMETHEUS_MULTIPROC_DIR"}, set_here - documented

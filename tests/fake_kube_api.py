"""A fake Kubernetes API server on a real socket, for the adapter boundary (plumbing/kube.py
talks to it through the official client and a kubeconfig): pods in namespaces, listed
and watched with a label selector (watches stream events as JSON lines, and can be
expired with 410 Gone), and Deployments read, patched (strategic merge of a container's
args), scaled, and rolled out after a delay or stalled.

No real API server can run on this machine (no kube-apiserver binary, no Go module
proxy), so this covers exactly the calls TalkTuah makes; each answer has the shape the
API server gives (PodList, WatchEvent, Deployment, Status)."""

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.net import free_port

TOKEN = "fake-kube-token"


def pod(name: str, ip: str, *, labels: dict[str, str], ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "deletionTimestamp": None},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def deployment(name: str, *, args: list[str], replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "busybox", "args": ["sleep", "inf"]},
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai",
                            "command": ["vllm", "serve"],
                            "args": args,
                        },
                    ]
                },
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    wanted = [part.split("=", 1) for part in selector.split(",") if part]
    return all(labels.get(key) == value for key, value in wanted)


class FakeKubeAPI:
    def __init__(self, namespace: str = "talktuah") -> None:
        self.namespace = namespace
        self.port = free_port()
        self.pods: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (version, type, pod)
        self.version = 1
        self.changed = threading.Condition()
        self.expired_before = 0  # watches from an older version get 410 Gone
        self.rollout_seconds = 0.3
        self.stall = False
        self.refuse: int | None = None  # answer every call with this status
        self.requests: list[tuple[str, str]] = []
        self.patches: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- the test's side ---------------------------------------------------------------

    def start(self) -> "FakeKubeAPI":
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.expired_before = 10**9  # open watches end
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "fake", "user": {"token": TOKEN}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": "x"},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def put_pod(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        kind = "MODIFIED" if name in self.pods else "ADDED"
        self._event(kind, body)

    def set_ready(self, name: str, ready: bool) -> None:
        body = copy.deepcopy(self.pods[name])
        body["status"]["conditions"][0]["status"] = "True" if ready else "False"
        self._event("MODIFIED", body)

    def terminate(self, name: str) -> None:
        body = copy.deepcopy(self.pods[name])
        body["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
        self._event("MODIFIED", body)

    def delete(self, name: str) -> None:
        self._event("DELETED", copy.deepcopy(self.pods[name]))

    def expire_watches(self) -> None:
        """Every open watch gets 410 Gone (its resourceVersion is too old)."""
        with self.changed:
            self.expired_before = self.version + 1
            self.changed.notify_all()

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        with self.changed:
            self.version += 1
            body["metadata"]["resourceVersion"] = str(self.version)
            body["metadata"]["namespace"] = self.namespace
            name = body["metadata"]["name"]
            if kind == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = body
            self.events.append((self.version, kind, copy.deepcopy(body)))
            self.changed.notify_all()

    # --- the API server's side -----------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(handler, 401, "Unauthorized")
        if self.refuse is not None:
            return self._status(handler, self.refuse, "refused by the test")
        parts = url.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["pods"]:
            if query.get("watch") == "true":
                return self._watch(handler, parts[3], query)
            return self._list(handler, parts[3], query.get("labelSelector", ""))
        if parts[:4] == ["apis", "apps", "v1", "namespaces"] and parts[5:6] == ["deployments"]:
            name = parts[6]
            found = self.deployments.get(name) if parts[4] == self.namespace else None
            if found is None:
                return self._status(handler, 404, f'deployments.apps "{name}" not found')
            if method == "GET":
                return self._json(handler, 200, found)
            body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
            self.patches.append({"path": url.path, "body": body})
            if parts[7:] == ["scale"]:
                found["spec"]["replicas"] = body["spec"]["replicas"]
                self._roll(found)
                return self._json(handler, 200, {"kind": "Scale", "apiVersion": "autoscaling/v1"})
            template = body["spec"]["template"]
            for change in template.get("spec", {}).get("containers", []):
                for container in found["spec"]["template"]["spec"]["containers"]:
                    if container["name"] == change["name"]:
                        container.update(change)
            annotations = template.get("metadata", {}).get("annotations", {})
            if annotations:
                meta = found["spec"]["template"].setdefault("metadata", {})
                meta.setdefault("annotations", {}).update(annotations)
            self._roll(found)
            return self._json(handler, 200, found)
        return self._status(handler, 404, "the fake does not serve this path")

    def _roll(self, found: dict[str, Any]) -> None:
        found["metadata"]["generation"] += 1
        found["status"]["updatedReplicas"] = 0
        generation = found["metadata"]["generation"]

        def finish() -> None:
            if self.stall:
                found["status"]["conditions"] = [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "vllm-2" has timed out progressing.',
                    }
                ]
                return
            replicas = found["spec"]["replicas"]
            found["status"].update(
                observedGeneration=generation,
                replicas=replicas,
                updatedReplicas=replicas,
                availableReplicas=replicas,
            )

        threading.Timer(self.rollout_seconds, finish).start()

    def _list(self, handler: BaseHTTPRequestHandler, namespace: str, selector: str) -> None:
        with self.changed:
            items = [
                copy.deepcopy(p)
                for p in self.pods.values()
                if namespace == self.namespace and _matches(p["metadata"]["labels"], selector)
            ]
            version = self.version
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(version)},
            "items": items,
        }
        self._json(handler, 200, body)

    def _watch(
        self, handler: BaseHTTPRequestHandler, namespace: str, query: dict[str, str]
    ) -> None:
        since = int(query.get("resourceVersion") or 0)
        selector = query.get("labelSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 300)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(line: dict[str, Any]) -> None:
            data = json.dumps(line).encode() + b"\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        try:
            while time.monotonic() < deadline:
                with self.changed:
                    if since < self.expired_before:
                        gone = {"kind": "Status", "code": 410, "reason": "Expired"}
                        send({"type": "ERROR", "object": {**gone, "message": "too old"}})
                        break
                    fresh = [e for e in self.events if e[0] > since]
                    if not fresh:
                        self.changed.wait(0.2)
                        continue
                for version, kind, body in fresh:
                    since = version
                    if namespace == self.namespace and _matches(
                        body["metadata"]["labels"], selector
                    ):
                        send({"type": kind, "object": body})
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        handler.close_connection = True

    def _json(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, message: str) -> None:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
        self._json(handler, code, {**body, "message": message, "reason": message})

"""A fake Kubernetes cluster for tests: kmock's API emulator on 127.0.0.1, plus the controllers.

kmock (``kmock.KubernetesEmulator``) stores objects in memory and serves create / get / list /
merge-patch / delete over real HTTP, so the target is driven through the real ``kubernetes``
client. Everything a real cluster does besides storing objects is played here:

* ``FakeCluster`` (the API server's part): ``/version/``, Namespace objects (kmock reads
  ``/api/v1/namespaces/<name>`` as a namespace scope, not an object), SelfSubjectAccessReview
  answers (``denied`` lists what to refuse), ``metadata.generation`` bookkeeping on Deployments,
  and injected error answers (``fail``), e.g. 503s or a 409 race.
* ``FakeControllers`` (Deployment + ReplicaSet controllers and the kubelets): a background
  thread that, for each new pod template, creates pods with the status a real node would
  report for that image (ready, ImagePullBackOff, CrashLoopBackOff, Unschedulable, never
  ready) plus their events, and writes the Deployment status. It talks to the emulator over
  the API like a real controller, as ``USER_AGENT``, so tests can tell its writes apart. Bare
  pods (the candidate) get the status their image's outcome gives, like a kubelet would.
* ``assign_load_balancer``: what the cloud's load-balancer controller does, on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp.web
import attrs
from kmock import KubernetesEmulator, Server, action
from kmock._internal.dicts import merge_patch_dict

USER_AGENT = "fake-controllers"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MERGE_PATCH = "application/merge-patch+json"
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass
class Call:
    method: str
    path: str  # with the query string
    user_agent: str


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    times: int


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}
    return aiohttp.web.json_response(body, status=code)


@attrs.define(kw_only=True)
class FakeCluster(KubernetesEmulator):
    """kmock's emulator plus the API server behaviour the target relies on (see module doc)."""

    track_generation: bool = True
    denied: set = attrs.field(factory=set)  # {(verb, resource)} refused by access reviews
    calls: list = attrs.field(factory=list)  # every request, in order
    faults: list = attrs.field(factory=list)
    namespaces: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in ("v1/pods", "v1/events", "v1/services", "apps/v1/deployments"):
            self.resources[resource] = {}  # so that listing an empty resource answers [] not 404

    def fail(self, method: str, path: str, status: int, *, times: int = 1) -> None:
        """Answer the next ``times`` requests ``METHOD path-regex`` with HTTP ``status``."""
        self.faults.append(Fault(method.upper(), re.compile(path), status, times))

    def writes(self, *, exclude_agent: str = USER_AGENT) -> list[Call]:
        return [c for c in list(self.calls) if c.method in WRITE_METHODS and c.user_agent != exclude_agent]

    async def __call__(self, raw_request):
        await raw_request.read()
        self.calls.append(Call(raw_request.method, raw_request.path_qs, raw_request.headers.get("User-Agent", "")))
        for fault in list(self.faults):
            if fault.times > 0 and fault.method == raw_request.method and fault.path.search(raw_request.path):
                fault.times -= 1
                reason = "AlreadyExists" if fault.status == 409 else "InternalError"
                message = f"injected HTTP {fault.status} for {raw_request.method} {raw_request.path}"
                return _status(fault.status, reason, message)
        if raw_request.path == "/version/":  # the python client's path; kmock serves only /version
            return aiohttp.web.json_response(await self._serve_server_version(None))
        if raw_request.path == _ACCESS_REVIEW_PATH and raw_request.method == "POST":
            return self._review(await raw_request.json())
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match:
            return await self._serve_namespace(raw_request, match["name"])
        return await super().__call__(raw_request)

    async def _handle(self, request):
        if self.track_generation and request.resource is not None and request.resource.plural == "deployments":
            self._bump_generation(request)
        return await super()._handle(request)

    def _bump_generation(self, request) -> None:
        """Like the API server: generation 1 on create, +1 on every change of ``spec``."""
        data = request.data if isinstance(request.data, dict) else None
        if data is None or request.subresource is not None:
            return
        if request.action == action.CREATE:
            data.setdefault("metadata", {})["generation"] = 1
        elif request.action == action.UPDATE and "spec" in data:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return
            live = self.objects[key].raw
            if merge_patch_dict(live.get("spec") or {}, data["spec"]) != live.get("spec"):
                generation = (live.get("metadata") or {}).get("generation") or 0
                data.setdefault("metadata", {})["generation"] = generation + 1

    def _review(self, review: dict) -> aiohttp.web.Response:
        attributes = (review.get("spec") or {}).get("resourceAttributes") or {}
        refused = (attributes.get("verb"), attributes.get("resource")) in self.denied
        review["status"] = {"allowed": not refused, **({"reason": "RBAC: no role grants it"} if refused else {})}
        return aiohttp.web.json_response(review, status=201)

    async def _serve_namespace(self, raw_request, name: str | None) -> aiohttp.web.Response:
        if raw_request.method == "GET" and name is None:
            return aiohttp.web.json_response({"kind": "NamespaceList", "items": list(self.namespaces.values())})
        if raw_request.method == "GET":
            if name not in self.namespaces:
                return _status(404, "NotFound", f'namespaces "{name}" not found')
            return aiohttp.web.json_response(self.namespaces[name])
        if raw_request.method == "POST" and name is None:
            body = await raw_request.json()
            name = body["metadata"]["name"]
            if name in self.namespaces:
                return _status(409, "AlreadyExists", f'namespaces "{name}" already exists')
            body["status"] = {"phase": "Active"}
            self.namespaces[name] = body
            return aiohttp.web.json_response(body, status=201)
        return _status(405, "MethodNotAllowed", f"{raw_request.method} {raw_request.path} is not emulated")


@contextlib.contextmanager
def running_cluster(**options):
    """A FakeCluster served on 127.0.0.1 from an event loop in a background thread; yields
    (cluster, url). The sync ``kubernetes`` client blocks, so the emulator needs its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start():
        cluster = await stack.enter_async_context(FakeCluster(**options))
        server = await stack.enter_async_context(Server(cluster, host="127.0.0.1"))
        return cluster, f"http://127.0.0.1:{server.port}"

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def write_kubeconfig(path: Path, url: str, *, namespace: str = "tfserving", token: str = "test-token") -> Path:
    """A kubeconfig for ``url`` with a bearer token, as a user's ~/.kube/config would look."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "deployer", "namespace": namespace}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def api_client(kubeconfig: Path, *, user_agent: str | None = None):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig))
    if user_agent:
        client.user_agent = user_agent
    return client


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# What a node reports for a pod of an image: outcome -> (phase, container state, ready, conditions).
READY, PULL_FAILS, CRASH_LOOP, UNSCHEDULABLE, NEVER_READY, DEADLINE = (
    "ready", "ImagePullBackOff", "CrashLoopBackOff", "Unschedulable", "never-ready", "ProgressDeadlineExceeded",
)


class FakeControllers:
    """Deployment/ReplicaSet controllers and kubelets for one namespace, in a background thread.

    ``outcomes`` maps an image to what its pods do (default: become ready). Each new pod
    template (by hash) is reconciled once: a ready template gets ``replicas`` ready pods and the
    pods of other templates are deleted; a failing one gets one surge pod (maxSurge 1) with the
    failure's status and events, and the old pods keep serving.
    """

    def __init__(self, client, namespace: str = "tfserving", *, outcomes: dict | None = None,
                 pod_ips: list[str] | None = None, max_seconds: float = 120.0):
        from kubernetes import client as k8s

        self.core, self.apps = k8s.CoreV1Api(client), k8s.AppsV1Api(client)
        self.namespace = namespace
        self.outcomes = dict(outcomes or {})
        self._ips = itertools.cycle(pod_ips or [f"10.8.0.{i}" for i in range(2, 250)])
        self._seen: dict[str, str] = {}
        self._event_numbers = itertools.count()
        self._pod_numbers = itertools.count()  # pod names never repeat, as with real ReplicaSets
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, name="fake-controllers", daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> "FakeControllers":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                self.reconcile()
            except Exception as exc:  # surfaced on exit, so a broken fake fails the test visibly
                self.errors.append(exc)
                return
            self._stop.wait(0.02)

    def reconcile(self) -> None:
        deployments = self._items(self.apps.list_namespaced_deployment(self.namespace, _preload_content=False))
        names = {d["metadata"]["name"] for d in deployments}
        for pod in self._pods():
            owner = pod["metadata"].get("labels", {}).get("fake/deployment")
            if owner is not None and owner not in names:  # garbage-collect pods of deleted Deployments
                self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace, _preload_content=False)
            elif not pod.get("status"):  # a bare pod (the candidate): play its kubelet
                self._start_bare_pod(pod)
        for deployment in deployments:
            spec = deployment["spec"]
            generation = deployment["metadata"].get("generation")
            fingerprint = json.dumps([spec["template"], spec["replicas"], generation], sort_keys=True)
            if self._seen.get(deployment["metadata"]["name"]) != fingerprint:
                self._roll(deployment)
                self._seen[deployment["metadata"]["name"]] = fingerprint

    def _roll(self, deployment: dict) -> None:
        name, spec = deployment["metadata"]["name"], deployment["spec"]
        template, replicas = spec["template"], spec["replicas"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        image = template["spec"]["containers"][0]["image"]
        outcome = self.outcomes.get(image, READY)
        pods = self._pods(name)
        new = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == template_hash]
        old = [p for p in pods if p not in new]
        wanted = replicas if outcome == READY else 1
        for _ in range(len(new), wanted):
            self._create_pod(name, template, template_hash, outcome)
        if outcome == READY:
            for pod in old:
                self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace, _preload_content=False)
            status = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                      "availableReplicas": replicas, "unavailableReplicas": None,
                      "conditions": [_condition("Available", "True", "MinimumReplicasAvailable"),
                                     _condition("Progressing", "True", "NewReplicaSetAvailable")]}
        else:
            serving = sum(_ready(p) for p in old)
            if outcome == DEADLINE:
                message = f'ReplicaSet "{name}-{template_hash}" has timed out progressing.'
                progressing = _condition("Progressing", "False", DEADLINE, message)
            else:
                progressing = _condition("Progressing", "True", "ReplicaSetUpdated")
            available = _condition("Available", "True" if serving else "False", "MinimumReplicasAvailable")
            status = {"replicas": len(old) + 1, "updatedReplicas": 1, "readyReplicas": serving,
                      "availableReplicas": serving, "unavailableReplicas": 1, "conditions": [available, progressing]}
        status["observedGeneration"] = deployment["metadata"].get("generation")
        self.apps.patch_namespaced_deployment_status(name, self.namespace, {"status": status},
                                                     _content_type=MERGE_PATCH, _preload_content=False)

    def _create_pod(self, deployment: str, template: dict, template_hash: str, outcome: str) -> None:
        pod_name = f"{deployment}-{template_hash}-{next(self._pod_numbers)}"
        image = template["spec"]["containers"][0]["image"]
        labels = {**template["metadata"]["labels"], "pod-template-hash": template_hash, "fake/deployment": deployment}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": self.namespace, "labels": labels},
               "spec": template["spec"], "status": _pod_status(outcome, image, next(self._ips))}
        self._create_events(pod_name, outcome, image)
        self.core.create_namespaced_pod(self.namespace, pod, _preload_content=False)  # after its events: no race

    def _start_bare_pod(self, pod: dict) -> None:
        pod_name, image = pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]
        outcome = self.outcomes.get(image, READY)
        self._create_events(pod_name, outcome, image)
        status = {"status": _pod_status(outcome, image, next(self._ips))}
        self.core.patch_namespaced_pod_status(pod_name, self.namespace, status,
                                              _content_type=MERGE_PATCH, _preload_content=False)

    def _create_events(self, pod_name: str, outcome: str, image: str) -> None:
        for kind, reason, message in _pod_events(outcome, image, pod_name):
            event = {"apiVersion": "v1", "kind": "Event",
                     "metadata": {"name": f"{pod_name}.{next(self._event_numbers)}", "namespace": self.namespace},
                     "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": self.namespace},
                     "type": kind, "reason": reason, "message": message, "count": 1,
                     "firstTimestamp": _now(), "lastTimestamp": _now()}
            self.core.create_namespaced_event(self.namespace, event, _preload_content=False)

    def _pods(self, deployment: str | None = None) -> list[dict]:
        pods = self._items(self.core.list_namespaced_pod(self.namespace, _preload_content=False))
        return [p for p in pods if deployment is None or p["metadata"]["labels"].get("fake/deployment") == deployment]

    @staticmethod
    def _items(response) -> list[dict]:
        return json.loads(response.data).get("items") or []


def _condition(kind: str, status: str, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": _now(), "lastUpdateTime": _now()}


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _pod_status(outcome: str, image: str, ip: str) -> dict:
    scheduled = _condition("PodScheduled", "True", "")
    not_ready = _condition("Ready", "False", "ContainersNotReady", "containers with unready status: [tfserving]")
    container = {"name": "tfserving", "image": image, "ready": False, "restartCount": 0, "started": False}
    if outcome == UNSCHEDULABLE:
        return {"phase": "Pending", "conditions": [_condition("PodScheduled", "False", UNSCHEDULABLE, NO_NODE_FITS)]}
    if outcome == PULL_FAILS:
        container["state"] = {"waiting": {"reason": PULL_FAILS, "message": f'Back-off pulling image "{image}"'}}
        return {"phase": "Pending", "podIP": ip, "conditions": [scheduled, not_ready], "containerStatuses": [container]}
    if outcome == CRASH_LOOP:
        waiting = {"reason": CRASH_LOOP, "message": "back-off 40s restarting failed container=tfserving"}
        container.update(restartCount=3, state={"waiting": waiting},
                         lastState={"terminated": {"reason": "Error", "exitCode": 1}})
        return {"phase": "Running", "podIP": ip, "conditions": [scheduled, not_ready], "containerStatuses": [container]}
    running = {"running": {"startedAt": _now()}}
    if outcome in (NEVER_READY, DEADLINE):
        container.update(started=True, state=running)
        return {"phase": "Running", "podIP": ip, "conditions": [scheduled, not_ready], "containerStatuses": [container]}
    container.update(ready=True, started=True, state=running)
    return {"phase": "Running", "podIP": ip, "containerStatuses": [container],
            "conditions": [scheduled, _condition("ContainersReady", "True", ""), _condition("Ready", "True", "")]}


NO_NODE_FITS = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available."


def _pod_events(outcome: str, image: str, pod: str) -> list[tuple[str, str, str]]:
    scheduled = ("Normal", "Scheduled", f"Successfully assigned tfserving/{pod} to node-1")
    if outcome == UNSCHEDULABLE:
        return [("Warning", "FailedScheduling", NO_NODE_FITS)]
    if outcome == PULL_FAILS:
        return [scheduled, ("Normal", "Pulling", f'Pulling image "{image}"'),
                ("Warning", "Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = {image}: '
                                      "not found"),
                ("Warning", "Failed", "Error: ErrImagePull"),
                ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
                ("Warning", "Failed", "Error: ImagePullBackOff")]
    if outcome == CRASH_LOOP:
        return [scheduled, ("Normal", "Started", "Started container tfserving"),
                ("Warning", "BackOff", f"Back-off restarting failed container tfserving in pod {pod}")]
    if outcome in (NEVER_READY, DEADLINE):
        return [scheduled, ("Normal", "Started", "Started container tfserving"),
                ("Warning", "Unhealthy", "Readiness probe failed: model state: ['LOADING']")]
    return [scheduled, ("Normal", "Started", "Started container tfserving")]


def assign_load_balancer(client, namespace: str, service: str, ip: str) -> None:
    """What the cloud's load-balancer controller does once the balancer exists."""
    from kubernetes import client as k8s

    k8s.CoreV1Api(client).patch_namespaced_service_status(
        service, namespace, {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
        _content_type=MERGE_PATCH, _preload_content=False,
    )

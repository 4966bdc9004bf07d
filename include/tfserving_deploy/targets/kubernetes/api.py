"""``KubernetesApi``: every Kubernetes API call the target makes, one small method each, bound to
one namespace, with one retry policy and one way of explaining a failure (``explain``).

The caller builds the ``kubernetes.client.ApiClient`` (from a kubeconfig, the provider's hook, or
a GKE endpoint + CA + token). Objects travel as the API's JSON (dicts, ``_preload_content=False``),
the same shape as the manifests.
"""

from __future__ import annotations

import json
import logging

import tenacity

from ...errors import AccessDenied, Permanent, TargetError

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"  # lists are replaced whole
REQUEST_TIMEOUT = 30.0
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
MAX_BACKOFF = 8.0  # seconds: the backoff doubles from ``backoff`` up to this
WAIT_BUDGET = 60.0  # seconds one call may wait between its attempts in all, Retry-After included


class ApiCallError(TargetError):
    """The API answered a call with an error status (kept as ``status``)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class ApiCallDenied(ApiCallError, AccessDenied):
    """HTTP 401 or 403: the credentials or the identity's permissions; no retry changes them."""


class ApiCallInvalid(ApiCallError, Permanent):
    """HTTP 400 or 422: the API refused the object itself (a bad resource quantity, label or name).
    The object is made from the run's params, and a retry sends the same one."""


INVALID_STATUSES = frozenset({400, 422})


def api_call_error(message: str, status: int) -> ApiCallError:
    if status in (401, 403):
        return ApiCallDenied(message, status)
    return (ApiCallInvalid if status in INVALID_STATUSES else ApiCallError)(message, status)


def explain(
    status: int,
    *,
    what: str,
    host: str,
    message: str = "",
    credentials: str = "the Kubernetes/GKE connection",
    namespace: str | None = None,
    permission: str = "that permission",
    attempts: int = 1,
    retry_after: float | None = None,
) -> str:
    """Why ``what`` failed with HTTP ``status`` and what to do; the sync target and the async
    LoadBalancer trigger say it the same way. ``retry_after``: the wait the API server asked for
    (Retry-After) when it was longer than the call could still wait."""
    detail = f": {message}" if message else ""
    if status == 401:
        return (
            f"Kubernetes API at {host} rejected the credentials (HTTP 401) for {what}{detail}; the token from "
            f"{credentials} is missing or expired: refresh it"
        )
    if status == 403:
        where = f" in {namespace!r}" if namespace else ""
        return (
            f"Kubernetes API at {host} forbids {what} (HTTP 403){detail}; grant {permission}{where} to the "
            f"identity of {credentials} (a Role and RoleBinding)"
        )
    if status in INVALID_STATUSES:
        return (
            f"Kubernetes API at {host} refused {what} as invalid (HTTP {status}){detail}; the object is made "
            "from the run's params (resources, namespace, model_name, server settings): fix the one it points at"
        )
    if status == 0:
        return f"Kubernetes API at {host}: {message} for {what}; check the cluster CA certificate and endpoint"
    if status in RETRYABLE_STATUSES and (attempts > 1 or retry_after is not None):
        after = f" after {attempts} attempts" if attempts > 1 else ""
        asks = "" if retry_after is None else f" and asks for {retry_after:g}s before the next attempt (Retry-After)"
        return (
            f"{what} failed with HTTP {status} from {host}{after}{detail}; the API server is overloaded or "
            f"unhealthy{asks}: retry later"
        )
    return f"{what} failed with HTTP {status} from {host}{detail}"


def retry_after(exc: BaseException) -> float | None:
    """The wait, in seconds, that the API server asked for with a transient answer (its
    ``Retry-After`` header: whole seconds, as the API server sends it), else None. client-go and
    the cncf-kubernetes provider honour it the same way; the provider on 429 only, client-go on
    429 and 5xx, as here."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException) or exc.status not in RETRYABLE_STATUSES:
        return None
    try:
        seconds = int(str((exc.headers or {}).get("Retry-After", "")))
    except (TypeError, ValueError):
        return None
    return float(seconds) if seconds >= 0 else None


class WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """A backoff doubling from ``backoff`` seconds up to ``MAX_BACKOFF``, or longer when the API
    server asked for longer (``retry_after``): the provider's ``WaitRetryAfterOrExponential``,
    with client-go's rule that an asked wait never shortens the backoff (``Retry-After: 0``)."""

    def __init__(self, backoff: float):
        self.backoff = tenacity.wait_exponential(multiplier=backoff, max=MAX_BACKOFF)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        return max(self.backoff(retry_state), asked or 0.0)


class StopPastWaitBudget(tenacity.stop.stop_base):
    """Stop when the next wait would take the call's waits past ``budget`` seconds in all: a
    Retry-After longer than that fails now, saying so, rather than hold the task."""

    def __init__(self, budget: float):
        self.budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.idle_for + retry_state.upcoming_sleep > self.budget


def leave_statuses_to_call(api_client) -> None:
    """urllib3's default Retry (3 tries, under the client) also repeats a GET/PUT/DELETE answered
    429 or 503 with a Retry-After header, sleeping as long as the header says, without bound and
    unseen by ``KubernetesApi.call``. Its quick connection retries stay; answers go to ``call``."""
    from urllib3.util.retry import Retry

    pool_kw = api_client.rest_client.pool_manager.connection_pool_kw
    pool_kw["retries"] = Retry.from_int(pool_kw.get("retries")).new(respect_retry_after_header=False)


def status_message(exc) -> str:
    """The ``message`` of the API's Status answer, else the HTTP reason."""
    try:
        return str(json.loads(exc.body)["message"])[:300]
    except (TypeError, ValueError, KeyError):
        return str(exc.reason or "")


class KubernetesApi:
    def __init__(
        self,
        api_client,
        namespace: str,
        *,
        field_manager: str = "tfserving-deploy",
        attempts: int = 5,
        backoff: float = 0.5,
        wait_budget: float = WAIT_BUDGET,
        credentials: str = "the Kubernetes/GKE connection",
    ):
        from kubernetes import client

        self.client, self.namespace, self.field_manager = api_client, namespace, field_manager
        self.attempts, self.backoff, self.credentials = max(1, attempts), backoff, credentials
        self.wait_budget = wait_budget
        leave_statuses_to_call(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self._authorization = client.AuthorizationV1Api(api_client)
        self._version = client.VersionApi(api_client)

    @property
    def host(self) -> str:
        return self.client.configuration.host

    # -- one method per call -----------------------------------------------------------------------

    def server_version(self) -> dict:
        return self.call("read the server version", self._version.get_code)

    def read_namespace(self) -> dict | None:
        return self.read(f"read Namespace {self.namespace}", self.core.read_namespace, self.namespace)

    def create_namespace(self) -> bool:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        return self.create(f"create Namespace {self.namespace}", self.core.create_namespace, body)

    def review_access(self, verb: str, group: str, resource: str, name: str | None = None) -> dict:
        """The real authorizer's answer (``status``) to "may I ``verb`` ``resource`` (the one
        called ``name``, when given) here?"."""
        kind, _, subresource = resource.partition("/")
        attributes = {
            "namespace": self.namespace,
            "verb": verb,
            "group": group,
            "resource": kind,
            **({"subresource": subresource} if subresource else {}),
            **({"name": name} if name else {}),
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        answer = self.call(
            f"review access to {verb} {resource}", self._authorization.create_self_subject_access_review, review
        )
        return answer.get("status") or {}

    def read_deployment(self, name: str) -> dict | None:
        return self.read(
            f"read Deployment {self.namespace}/{name}", self.apps.read_namespaced_deployment, name, self.namespace
        )

    def read_service(self, name: str) -> dict | None:
        return self.read(
            f"read Service {self.namespace}/{name}", self.core.read_namespaced_service, name, self.namespace
        )

    def read_pod(self, name: str) -> dict | None:
        return self.read(f"read Pod {self.namespace}/{name}", self.core.read_namespaced_pod, name, self.namespace)

    def create_pod(self, body: dict) -> bool:
        where = f"{self.namespace}/{body['metadata']['name']}"
        return self.create(f"create Pod {where}", self.core.create_namespaced_pod, self.namespace, body)

    def delete_pod(self, name: str) -> None:
        """Gone at once (no grace period): only candidates are deleted this way, and they get no traffic."""
        self.delete(
            f"delete Pod {self.namespace}/{name}", self.core.delete_namespaced_pod, name, grace_period_seconds=0
        )

    def delete_deployment(self, name: str) -> None:
        self.delete(
            f"delete Deployment {self.namespace}/{name}",
            self.apps.delete_namespaced_deployment,
            name,
            propagation_policy="Background",
        )

    def delete_service(self, name: str) -> None:
        self.delete(f"delete Service {self.namespace}/{name}", self.core.delete_namespaced_service, name)

    def delete_disruption_budget(self, name: str) -> None:
        self.delete(
            f"delete PodDisruptionBudget {self.namespace}/{name}",
            self.policy.delete_namespaced_pod_disruption_budget,
            name,
        )

    def pods(self, labels: dict) -> list[dict]:
        """Pods carrying every label in ``labels``, not terminating, by name."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        listing = self.call(
            f"list pods labelled {labels} in {self.namespace}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        pods = [p for p in listing.get("items") or [] if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def pod_logs(self, pod: dict, *, previous: bool = False, tail: int = 15) -> str:
        """The serving container's last log lines (``previous``: of its last run, before a restart)."""
        from .manifests import CONTAINER_NAME

        name = pod["metadata"]["name"]
        return self.call(
            f"read the logs of pod {self.namespace}/{name}",
            self.core.read_namespaced_pod_log,
            name,
            self.namespace,
            container=CONTAINER_NAME,
            previous=previous,
            tail_lines=tail,
            raw=True,
        )

    def exec_in_pod(self, name: str, command: list[str], *, timeout: float = REQUEST_TIMEOUT) -> str:
        """``command``'s standard output, run in pod ``name``'s serving container (``pods/exec``).
        Raises TargetError, saying why, when the API refuses or the command fails."""
        from kubernetes import client
        from kubernetes.stream import stream

        from .manifests import CONTAINER_NAME

        what = f"exec {command!r} in pod {self.namespace}/{name}"
        # A client of its own, as for port-forwards: ``stream`` swaps its ApiClient's request method.
        core = client.CoreV1Api(client.ApiClient(self.client.configuration))
        try:
            response = stream(
                core.connect_get_namespaced_pod_exec,
                name,
                self.namespace,
                container=CONTAINER_NAME,
                command=command,
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except Exception as exc:  # the websocket's refusal, under the library's own AttributeError
            status, reason = websocket_refusal(exc)
            raise api_call_error(
                explain(
                    status,
                    what=what,
                    host=self.host,
                    message=reason,
                    credentials=self.credentials,
                    namespace=self.namespace,
                    permission="create on pods/exec",
                ),
                status,
            ) from exc
        try:
            response.run_forever(timeout=timeout)
            out, err, code = response.read_stdout(), response.read_stderr(), response.returncode
        finally:
            response.close()
        if code != 0:
            raise TargetError(f"{what} exited with {code}: {(err or out).strip()[-300:]!r}")
        return out

    def pod_events(self, pod: dict) -> list[dict]:
        """This pod's events (not those of an earlier pod of the same name), oldest first."""
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        listing = self.call(
            f"list events of pod {self.namespace}/{name}",
            self.core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.uid={uid}",
        )
        return sorted(listing.get("items") or [], key=_event_time)

    # -- the retry policy and the verbs ------------------------------------------------------------

    def call(self, what: str, fn, *args, expect: tuple[int, ...] = (), raw: bool = False, **kwargs):
        """One API call, answered as a dict (the API's JSON), or as text with ``raw``.

        Transient answers (409, 429, 5xx, connection errors) are retried (tenacity), at most
        ``attempts`` times, after a backoff doubling from ``backoff`` up to ``MAX_BACKOFF`` or the
        longer wait the API server asks for (``Retry-After``); the waits of one call add up to at
        most ``wait_budget`` seconds and each request is bounded by ``REQUEST_TIMEOUT``, so a call
        ends in bounded time. Statuses in ``expect`` are raised at once as ApiCallError for the
        caller. The rest are raised at once too: 401/403 as ``ApiCallDenied`` and 400/422 as
        ``ApiCallInvalid`` (both Permanent: the task fails without retries), others as ApiCallError.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.update(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, ApiException):
                return exc.status in RETRYABLE_STATUSES and exc.status not in expect
            return isinstance(exc, (HTTPError, OSError))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=WaitRetryAfterOrBackoff(self.backoff),
            stop=tenacity.stop_after_attempt(self.attempts) | StopPastWaitBudget(self.wait_budget),
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        try:
            data = retrying(lambda: fn(*args, **kwargs).data)
        except ApiException as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            cut = transient(exc) and attempts < self.attempts  # the wait budget ran out first
            text = explain(
                exc.status,
                what=what,
                host=self.host,
                message=status_message(exc),
                credentials=self.credentials,
                namespace=self.namespace,
                attempts=attempts,
                retry_after=(retry_after(exc) or None) if cut else None,  # the wait it asked for, not 0
            )
            raise api_call_error(text, exc.status) from exc
        except (HTTPError, OSError) as exc:
            raise TargetError(
                f"Kubernetes API at {self.host} is not reachable ({type(exc).__name__}: {exc}) for {what}; "
                "check the cluster endpoint, that the cluster is running and the network path to it "
                "(VPN, authorized networks)"
            ) from exc
        return data.decode(errors="replace") if raw else json.loads(data or b"{}")

    def _log_retry(self, what: str, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(exc, "status", None)
        problem = f"HTTP {status} {status_message(exc)}" if status is not None else type(exc).__name__
        asked = retry_after(exc) if exc is not None else None
        by = " (Retry-After)" if asked and asked >= state.upcoming_sleep else ""  # the server set this wait
        log.warning(
            "%s: %s (attempt %d of %d); retrying in %.2fs%s",
            what,
            problem,
            state.attempt_number,
            self.attempts,
            state.upcoming_sleep,
            by,
        )

    def read(self, what: str, fn, *args) -> dict | None:
        """A GET that may find nothing (404 -> None)."""
        try:
            return self.call(what, fn, *args, expect=(404,))
        except ApiCallError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, what: str, fn, *args) -> bool:
        """Create; False when the object already exists (409)."""
        try:
            self.call(what, fn, *args, expect=(409,), field_manager=self.field_manager)
            return True
        except ApiCallError as exc:
            if exc.status == 409:
                return False
            raise

    def patch(self, what: str, fn, name: str, body: dict) -> dict:
        return self.call(
            what, fn, name, self.namespace, body, _content_type=MERGE_PATCH, field_manager=self.field_manager
        )

    def delete(self, what: str, fn, name: str, **kwargs) -> None:
        """Delete; already gone (404) is fine."""
        try:
            self.call(what, fn, name, self.namespace, expect=(404,), **kwargs)
        except ApiCallError as exc:
            if exc.status != 404:
                raise


def websocket_refusal(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, the API's message) behind a failed exec or port-forward websocket: the
    client library hides the handshake's answer in the chain of an AttributeError."""
    status, reason = 0, str(exc)
    chain: BaseException | None = exc
    while chain is not None:
        status = getattr(chain, "status_code", None) or status
        reason = str(getattr(chain, "reason", None) or "") or reason
        chain = chain.__context__
    body = reason.split(" -+-+- ")[-1]
    try:
        reason = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        pass
    return int(status), reason[:300]


def _event_time(event: dict) -> str:
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return event.get("lastTimestamp") or event.get("eventTime") or created or ""

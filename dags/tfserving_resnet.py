"""Ship the TensorFlow Serving ResNet model: the "TF Serving on Kubernetes" tutorial as a DAG.

check_for_change -> fetch_model -> build_image -> push_image -> ensure_cluster
  -> start_candidate (setup) -> validate_candidate -> stop_candidate (teardown)
  -> deploy (promote) -> wait_for_endpoint -> validate  (-> rollback, if any of the last three fails)

This file only wires tasks and params; the work lives in ``include/tfserving_deploy`` (plain
Python) and the thin operators in ``plugins/tfserving_airflow``. Runs three ways: from the UI
form, on a schedule / upstream Asset (model refresh), and by backfill (see README).
"""

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, AssetAlias, AssetOrTimeSchedule, CronTriggerTimetable, Param

from tfserving_airflow.config import allowlist, form_default
from tfserving_airflow.operators import (
    BuildImageOperator,
    CheckForChangeOperator,
    DeployModelOperator,
    EnsureClusterOperator,
    FetchModelOperator,
    PushImageOperator,
    RollbackOperator,
    StartCandidateOperator,
    StopCandidateOperator,
    ValidateModelOperator,
)
from tfserving_airflow.sensors import WaitForEndpointSensor
from tfserving_deploy.defaults import GKE_CLUSTER_NAME, GKE_NODE_COUNT, NAMESPACE
from tfserving_deploy.image.references import form_pattern
from tfserving_deploy.serving.server_config import (
    BATCHING_FIELDS,
    BATCHING_LIMITS,
    DEFAULT_MAX_CONNECTION_AGE_GRACE_MS,
    DEFAULT_MAX_CONNECTION_AGE_MS,
    MAX_CONNECTION_AGE_LIMIT_MS,
)

TUTORIAL_MODEL_URL = (
    "http://download.tensorflow.org/models/official/20181001_resnet/savedmodels/"
    "resnet_v2_fp32_savedmodel_NHWC_jpg.tar.gz"
)
CAT_JPEG = str(Path(__file__).parents[1] / "include" / "images" / "cat.jpg")
REFRESH = AssetOrTimeSchedule(
    timetable=CronTriggerTimetable(os.environ.get("TFSERVING_RESNET_REFRESH_CRON", "0 3 * * *"), timezone="UTC"),
    # A training DAG announces a new model with this Asset (extra: model_url, model_sha256).
    # By name, not URI: a URI scheme makes Airflow load every provider's URI handlers (~1 s parse).
    assets=Asset(name=os.environ.get("TFSERVING_RESNET_UPSTREAM_ASSET", "resnet_model_published")),
)


def allowlisted(param: str, **schema) -> Param:
    """A param whose values the deployment allowlists (``TFSERVING_DEPLOY_ALLOWED_*``, see
    ``tfserving_deploy.allowlists``): the form offers exactly those, with the form's default."""
    allowed = allowlist(param)
    return Param(allowed.default, enum=allowed.choices, **schema)


def P(name: str) -> str:
    """A param, as a template rendered at run time (operators parse it: tfserving_airflow.config)."""
    return "{{ params.%s }}" % name  # noqa: UP031 - a Jinja template: braces would need escaping


TARGET = {
    "target_name": P("target"),
    "target_options": {
        "docker_conn_id": P("registry_conn_id"),  # the local target pulls with it
        **{
            key: P(key)
            for key in (
                "namespace",
                "kubernetes_conn_id",
                "gcp_conn_id",
                "project_id",
                "location",
                "cluster_name",
                "node_count",
                "autopilot",
                "manifest_dir",
                "keep_failed_first_deploy",
                "resources",
                "pod_access",
                "service_type",
                "load_balancer_source_ranges",
                "grpc_max_connection_age_ms",
                "grpc_max_connection_age_grace_ms",
                "batching_parameters",
            )
        },
    },
}
BUILDER = {
    "builder_name": P("image_builder"),
    "builder_options": {"docker_conn_id": P("registry_conn_id"), "gcp_conn_id": P("gcp_conn_id")},
}
K8S, GKE, SERVING = "Kubernetes and GKE targets", "GKE target", "Serving behaviour"
MODEL = {"model_name": P("model_name")}

with DAG(
    dag_id="tfserving_resnet",
    description="Bake a SavedModel into a TF Serving image, validate it, roll it out, validate every replica",
    schedule=REFRESH,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(minutes=15),
    },
    params={
        "model_url": Param(
            form_default("model_url", TUTORIAL_MODEL_URL),
            type="string",
            minLength=1,
            description=(
                "SavedModel tarball (http(s):// or file://) in the tutorial layout <top>/<version>/ or <version>/. "
                "May use the run's date for backfills, e.g. https://models.example.com/{{ ds_nodash }}/resnet.tar.gz"
            ),
        ),
        "model_sha256": Param(
            None,
            type=["null", "string"],
            pattern="^[0-9a-fA-F]{64}$",
            description="Optional sha256 of the tarball; the run fails if the download differs.",
        ),
        "model_name": Param(
            form_default("model_name", "resnet"),
            type="string",
            pattern="^[a-z0-9][a-z0-9_-]{0,62}$",
            description="Name clients ask for (model_spec.name); becomes MODEL_NAME in the image.",
        ),
        "image_repository": Param(
            form_default("image_repository", "127.0.0.1:5000/resnet-serving"),
            type="string",
            pattern=form_pattern(tag_and_digest=False),  # the reference parser's grammar, no tag or digest
            description=(
                "Where the serving image is pushed, host[:port]/path in lower case without tag or digest, e.g. "
                "REGION-docker.pkg.dev/PROJECT/REPO/resnet. Credentials go only to the registry this host names."
            ),
        ),
        "serving_base_image": allowlisted(
            "serving_base_image",
            type="string",
            pattern=form_pattern(tag_and_digest=True),  # the reference parser's grammar
            description="TF Serving image the model is baked into (pin a tag or digest); the admin's list.",
        ),
        "image_builder": Param(
            "oci",
            type="string",
            enum=["oci", "docker"],
            description=(
                "'oci': adds the model layer through the registry API, no Docker engine, same inputs give the same "
                "digest (the base image must be in a registry). 'docker': the tutorial's run/cp/commit/push."
            ),
        ),
        "warmup_requests": Param(
            True,
            type="boolean",
            description=(
                "Bake the validation request (the cat photo) into the image as the model's "
                "assets.extra/tf_serving_warmup_requests, unless the model has one: TF Serving replays it before "
                "reporting the model AVAILABLE, so the first client request is not the slow one."
            ),
        ),
        "registry_conn_id": allowlisted(
            "registry_conn_id",
            type=["null", "string"],
            description=(
                "Optional docker connection with the registry's login/password (the admin's list). Without it, "
                "Artifact Registry / gcr.io repositories use the Google connection's token, others are pushed "
                "anonymously."
            ),
        ),
        "replicas": Param(3, type="integer", minimum=1, maximum=50, description="Serving replicas."),
        "target": Param(
            "local",
            type="string",
            enum=["local", "kubernetes", "gke"],
            description=(
                "'local': replicas on this machine's Docker engine. 'kubernetes': a Deployment + LoadBalancer Service "
                "through the kubernetes connection. 'gke': the same on a GKE cluster, created when missing."
            ),
        ),
        "expected_class": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="Optional class the validation cat photo must get (286 for the tutorial model).",
        ),
        "allow_signature_change": Param(
            False,
            type="boolean",
            description=(
                "Promote a model whose signature breaks clients of the one serving now (an input or output "
                "removed or renamed, another dtype, a narrower input shape). Off: such a model fails "
                "validate_candidate with the differences, and the current model keeps serving."
            ),
        ),
        "force": Param(
            False,
            type="boolean",
            description="Rebuild and redeploy even when this exact model already serves, healthy.",
        ),
        "grpc_max_connection_age_ms": Param(
            DEFAULT_MAX_CONNECTION_AGE_MS,
            type="integer",
            minimum=0,
            maximum=MAX_CONNECTION_AGE_LIMIT_MS,
            section=SERVING,
            description=(
                "Each replica closes a client's gRPC connection after this age, so the client reconnects and "
                "the load balancer picks a pod again (one channel otherwise stays on one pod). 0: never."
            ),
        ),
        "grpc_max_connection_age_grace_ms": Param(
            DEFAULT_MAX_CONNECTION_AGE_GRACE_MS,
            type="integer",
            minimum=0,
            maximum=MAX_CONNECTION_AGE_LIMIT_MS,
            section=SERVING,
            description="How long calls in flight on an aged connection may take to finish.",
        ),
        "batching_parameters": Param(
            None,
            type=["null", "object"],
            properties={
                key: {"type": "integer", "minimum": 1, "maximum": BATCHING_LIMITS[key]} for key in BATCHING_FIELDS
            },
            additionalProperties=False,
            section=SERVING,
            description=(
                'Server-side batching, e.g. {"max_batch_size": 32, "batch_timeout_micros": 2000, '
                '"num_batch_threads": 4}: more throughput for some latency. null: off.'
            ),
        ),
        "balance_check_seconds": Param(
            120,
            type="integer",
            minimum=0,
            maximum=600,
            section=SERVING,
            description=(
                "validate sends requests through the load balancer on one gRPC channel until every ready pod "
                "has answered, for at most this long, and fails if one got none. 0: no check."
            ),
        ),
        "namespace": Param(
            NAMESPACE,
            type="string",
            pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            section=K8S,
            description="Namespace of the Deployment and Service (created when missing).",
        ),
        "kubernetes_conn_id": allowlisted(
            "kubernetes_conn_id",
            type="string",
            section=K8S,
            description="Airflow connection to the cluster (target=kubernetes); the admin's list.",
        ),
        "manifest_dir": allowlisted(
            "manifest_dir",
            type=["null", "string"],
            section=K8S,
            description="If set, the rendered Deployment/Service YAML is written there (GitOps); the admin's list.",
        ),
        "keep_failed_first_deploy": Param(
            False,
            type="boolean",
            section=K8S,
            description="Keep a failed first-ever Deployment for debugging instead of removing it.",
        ),
        "resources": Param(
            None,
            type=["null", "object"],
            section=K8S,
            description=(
                'Serving container resources, e.g. {"requests": {"cpu": "500m", "memory": "1Gi"}, '
                '"limits": {"memory": "2Gi"}}. Empty: sized from the candidate\'s measured peak memory (the limit '
                "covers two copies during a version swap), else these defaults. Given: used as is, on every target."
            ),
        ),
        "pod_access": Param(
            "auto",
            type="string",
            enum=["auto", "pod-ip", "port-forward"],
            section=K8S,
            description=(
                "How validation reaches each pod: 'pod-ip' from inside the cluster's network, 'port-forward' through "
                "the API server (Airflow elsewhere), 'auto' tries a pod IP once, then port-forwards."
            ),
        ),
        "service_type": Param(
            "LoadBalancer",
            type="string",
            enum=["LoadBalancer", "InternalLoadBalancer", "ClusterIP"],
            section=K8S,
            description=(
                "How clients reach the model. TF Serving authenticates nobody: 'LoadBalancer' is an address for "
                "everyone who can route to it (limit it with load_balancer_source_ranges), 'InternalLoadBalancer' "
                "an address inside the VPC only (GKE), 'ClusterIP' none outside the cluster."
            ),
        ),
        "load_balancer_source_ranges": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"},
            section=K8S,
            description='CIDRs allowed to reach the load balancer, e.g. ["10.0.0.0/8"]; empty: any address.',
        ),
        "gcp_conn_id": allowlisted(
            "gcp_conn_id", type="string", section=GKE, description="Google Cloud connection; the admin's list."
        ),
        "project_id": Param(
            None, type=["null", "string"], section=GKE, description="GCP project (default: the connection's)."
        ),
        "location": Param("us-central1-a", type="string", section=GKE, description="Zone or region of the cluster."),
        "cluster_name": Param(GKE_CLUSTER_NAME, type="string", section=GKE, description="GKE cluster name."),
        "node_count": Param(
            GKE_NODE_COUNT, type="integer", minimum=1, section=GKE, description="Nodes when the cluster is created."
        ),
        "autopilot": Param(False, type="boolean", section=GKE, description="Create an Autopilot cluster instead."),
    },
    tags=["tfserving", "deploy"],
) as dag:
    check = CheckForChangeOperator(
        task_id="check_for_change",
        model_url=P("model_url"),
        model_sha256=P("model_sha256"),
        replicas=P("replicas"),
        force=P("force"),
        **TARGET,
        **MODEL,
    )
    fetch = FetchModelOperator(
        task_id="fetch_model",
        model_url=P("model_url"),
        model_sha256=P("model_sha256"),
        outlets=[AssetAlias("tfserving_model_artifact")],
        execution_timeout=timedelta(minutes=30),
    )
    build = BuildImageOperator(
        task_id="build_image",
        model=fetch.output,
        model_url=P("model_url"),  # to fetch the model again, with its credentials, on a worker without the cache
        base_image=P("serving_base_image"),
        image_repository=P("image_repository"),
        warmup_requests=P("warmup_requests"),
        warmup_image_path=CAT_JPEG,
        **BUILDER,
        **MODEL,
    )
    push = PushImageOperator(
        task_id="push_image",
        image=build.output,
        model=fetch.output,
        **BUILDER,
        outlets=[AssetAlias("tfserving_image")],
        execution_timeout=timedelta(minutes=30),
    )
    cluster = EnsureClusterOperator(
        task_id="ensure_cluster",
        image_repository=P("image_repository"),
        execution_timeout=timedelta(minutes=45),
        **TARGET,
        **MODEL,
    )  # a new GKE cluster takes a while
    candidate = StartCandidateOperator(
        task_id="start_candidate", image=push.output, model=fetch.output, **TARGET, **MODEL
    )
    check_candidate = ValidateModelOperator(
        task_id="validate_candidate",
        endpoints=candidate.output,
        model=fetch.output,
        model_url=P("model_url"),  # to fetch the model again, with its credentials, on a worker without the cache
        image=push.output,
        image_path=CAT_JPEG,
        expected_class=P("expected_class"),
        compare_with_serving=True,
        allow_signature_change=P("allow_signature_change"),
        **TARGET,
        **MODEL,
    )
    stop_candidate = StopCandidateOperator(task_id="stop_candidate", **TARGET, **MODEL)
    deploy = DeployModelOperator(
        task_id="deploy",
        image=push.output,
        model=fetch.output,
        replicas=P("replicas"),
        sizing=candidate.output["sizing"],  # memory and startup budget from the candidate's measurement
        execution_timeout=timedelta(minutes=45),  # a rollout of many replicas takes up to four waves
        **TARGET,
        **MODEL,
    )
    wait = WaitForEndpointSensor(
        task_id="wait_for_endpoint",
        image=push.output,
        model=fetch.output,
        replicas=P("replicas"),
        timeout=600,
        **TARGET,
        **MODEL,
    )
    validate = ValidateModelOperator(
        task_id="validate",
        endpoints=wait.output,
        model=fetch.output,
        model_url=P("model_url"),  # to fetch the model again, with its credentials, on a worker without the cache
        image=push.output,
        image_path=CAT_JPEG,
        expected_class=P("expected_class"),
        balance_check_seconds=P("balance_check_seconds"),
        outlets=[AssetAlias("tfserving_endpoint")],
        **TARGET,
        **MODEL,
    )
    rollback = RollbackOperator(task_id="rollback", image=push.output, **TARGET, **MODEL)

    (
        check
        >> fetch
        >> build
        >> push
        >> cluster
        >> candidate
        >> check_candidate
        >> stop_candidate.as_teardown(setups=candidate)
    )
    check_candidate >> deploy >> wait >> validate
    [deploy, wait, validate] >> rollback  # one_failed: the previous revision serves again

"""Ship the TensorFlow Serving ResNet model: fetch -> build -> push -> cluster -> deploy -> wait -> validate.

The "TensorFlow Serving on Kubernetes" tutorial as a repeatable, auditable DAG. This file only
wires tasks and params; the work lives in ``include/tfserving_deploy`` (plain Python) and the
thin operators in ``plugins/tfserving_airflow``.
"""

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param
from tfserving_airflow.operators import (
    BuildImageOperator,
    DeployModelOperator,
    EnsureClusterOperator,
    FetchModelOperator,
    PushImageOperator,
    ValidateModelOperator,
    WaitForEndpointSensor,
)

TUTORIAL_MODEL_URL = (
    "http://download.tensorflow.org/models/official/20181001_resnet/savedmodels/"
    "resnet_v2_fp32_savedmodel_NHWC_jpg.tar.gz"
)
CAT_JPEG = str(Path(__file__).parents[1] / "include" / "images" / "cat.jpg")

with DAG(
    dag_id="tfserving_resnet",
    description="Bake a SavedModel into a TF Serving image, roll it out and validate every replica",
    schedule=None,
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
        "model_url": Param(TUTORIAL_MODEL_URL, type="string", minLength=1,
                           description="SavedModel tarball (http(s):// or file://), tutorial layout <top>/<version>/ or <version>/."),
        "model_sha256": Param(None, type=["null", "string"], pattern="^[0-9a-fA-F]{64}$",
                              description="Optional sha256 of the tarball; the run fails if the download differs."),
        "model_name": Param("resnet", type="string", pattern="^[a-z0-9][a-z0-9_-]{0,62}$",
                            description="Name clients ask for (model_spec.name); becomes MODEL_NAME in the image."),
        "image_repository": Param("127.0.0.1:5000/resnet-serving", type="string", minLength=1,
                                  description="Where the serving image is pushed, e.g. REGION-docker.pkg.dev/PROJECT/REPO/resnet."),
        "serving_base_image": Param("tensorflow/serving:2.18.0", type="string", minLength=1,
                                    description="TF Serving image the model is baked into (pin a tag or digest)."),
        "replicas": Param(3, type="integer", minimum=1, maximum=50, description="Serving replicas."),
        "target": Param("local", type="string", enum=["local"],
                        description="Where to deploy: 'local' runs replicas on this machine's Docker engine."),
        "expected_class": Param(None, type=["null", "integer"], minimum=0,
                                description="Optional class the validation cat photo must get (286 for the tutorial model)."),
    },
    tags=["tfserving", "deploy"],
) as dag:
    fetch = FetchModelOperator(task_id="fetch_model", model_url="{{ params.model_url }}",
                               model_sha256="{{ params.model_sha256 }}", execution_timeout=timedelta(minutes=30))
    build = BuildImageOperator(task_id="build_image", model=fetch.output, model_name="{{ params.model_name }}",
                               base_image="{{ params.serving_base_image }}", image_repository="{{ params.image_repository }}")
    push = PushImageOperator(task_id="push_image", image=build.output, execution_timeout=timedelta(minutes=30))
    cluster = EnsureClusterOperator(task_id="ensure_cluster", target_name="{{ params.target }}",
                                    image_repository="{{ params.image_repository }}")
    deploy = DeployModelOperator(task_id="deploy", target_name="{{ params.target }}", image=push.output, model=fetch.output,
                                 model_name="{{ params.model_name }}", replicas="{{ params.replicas }}")
    wait = WaitForEndpointSensor(task_id="wait_for_endpoint", target_name="{{ params.target }}", image=push.output,
                                 model=fetch.output, model_name="{{ params.model_name }}", replicas="{{ params.replicas }}",
                                 timeout=600, poke_interval=2)
    validate = ValidateModelOperator(task_id="validate", endpoints=wait.output, model=fetch.output,
                                     model_name="{{ params.model_name }}", expected_class="{{ params.expected_class }}",
                                     image_path=CAT_JPEG)

    fetch >> build >> push >> cluster >> deploy >> wait >> validate

"""Defaults shared by the library, the Airflow glue and the DAG: one place for each."""

GRPC_PORT = 8500  # TF Serving's gRPC API
REST_PORT = 8501  # TF Serving's REST API (status, metadata, predict, metrics)
NAMESPACE = "tfserving"
KUBERNETES_CONN_ID = "kubernetes_default"
GCP_CONN_ID = "google_cloud_default"
SERVING_BASE_IMAGE = "tensorflow/serving:2.18.0"  # the tutorial's; pin a tag or digest
GKE_CLUSTER_NAME = "resnet-serving-cluster"
GKE_NODE_COUNT = 5
CACHE_ENV = "TFSERVING_DEPLOY_CACHE"  # the cache root (cache.py)

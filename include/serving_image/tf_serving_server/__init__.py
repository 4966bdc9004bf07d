"""A small stand-in for ``tensorflow_model_server`` (no binary or Docker Hub image is reachable here).

It implements the subset a deploy pipeline relies on, with the same flags, ports, status codes
and error messages as the real server:

* gRPC ``tensorflow.serving.PredictionService``: Predict, GetModelMetadata (Classify, Regress and
  MultiInference answer UNIMPLEMENTED) and ``tensorflow.serving.ModelService.GetModelStatus``.
* REST: ``GET /v1/models/<name>[/versions/<v>]``, ``GET .../metadata`` and ``POST ...:predict``
  (row ``instances`` and columnar ``inputs`` formats, ``{"b64": ...}`` for bytes).

Deviations from the real server, on purpose:

* The ports open at once and the model loads in a background thread, so clients can watch
  LOADING -> AVAILABLE (or END). The real server opens its ports only after the first load.
  Requests that arrive while LOADING get UNAVAILABLE.
* A failed load (no version directory, no ``saved_model.pb``, no ``serving_default`` signature,
  a TensorFlow load error) ends in END with the error at once: ``--max_num_load_retries``
  defaults to 0 here, to 5 (a minute apart, LOADING meanwhile) in the real server. Both honour
  the flag and ``--load_retry_interval_micros``.
* One model, its highest numeric version, loaded once: no file-system polling, model config file
  or version labels. SIGTERM exits immediately (no drain), as the real server does.
* Warmup requests (``<version>/assets.extra/tf_serving_warmup_requests``) are replayed before
  AVAILABLE, ``--grpc_channel_arguments`` reach the gRPC server, and ``--monitoring_config_file``
  exports the request count and latency under the real names. ``--enable_batching`` and
  ``--batching_parameters_file`` are checked (an unknown field stops the start) but requests run
  one by one.
* Bounds (limits.py): ``--max_message_bytes`` (64 MiB; the real server takes 2 GiB) caps gRPC
  messages, ``--rest_api_max_body_bytes`` (16 MiB; the real server takes any) REST bodies and
  ``--max_request_batch_size`` (256) the rows of a Predict; ``--grpc_max_threads``, ``--rest_api_num_threads`` and
  ``--rest_api_timeout_in_ms`` mean what they mean to the real server. Request metrics are
  recorded only for the served model's name (the real server records any name a client sends).
"""

from .grpc_api import ModelServicer, PredictionServicer
from .limits import Limits
from .main import main, parse_args, start_servers
from .model import DEFAULT_SIGNATURE, ServedModel, ServingError
from .rest_api import rest_predict
from .rest_server import make_rest_handler

__all__ = [
    "DEFAULT_SIGNATURE",
    "Limits",
    "ModelServicer",
    "PredictionServicer",
    "ServedModel",
    "ServingError",
    "main",
    "make_rest_handler",
    "parse_args",
    "rest_predict",
    "start_servers",
]

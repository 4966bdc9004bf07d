"""The tutorial's gRPC client: send a JPEG to TF Serving's ``Predict`` and print the class.

    python scripts/resnet_client_grpc.py --server <load balancer address>:8500

The request is the tutorial's own: model ``resnet``, signature ``serving_default``, the raw JPEG
bytes as ``image_bytes`` with shape [1]. The cat photo comes back as class 286.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CAT = Path(__file__).resolve().parents[1] / "include" / "images" / "cat.jpg"


def predict(server: str, model_name: str = "resnet", image: Path = CAT, timeout: float = 10.0) -> tuple[int, int]:
    """(class, model version) as the server answers for ``image``."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(image.read_bytes(), shape=[1]))
    with grpc.insecure_channel(server) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout)
    return int(result.outputs["classes"].int64_val[0]), result.model_spec.version.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8500", help="host:port of TF Serving's gRPC API")
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--image", type=Path, default=CAT)
    args = parser.parse_args()
    label, version = predict(args.server, args.model, args.image)
    print(f"class {label} (model {args.model!r} version {version})")


if __name__ == "__main__":
    main()

"""Requests for a model, shaped by its own signature: the one request builder.

Validation, the candidate check and the warmup records baked into the image all send what this
builds, so a model that cannot be fed fails at fetch, before any build.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import InvalidModelError
from ..native_logs import import_tensorflow
from .signature import Signature, TensorInfo

NUMPY_DTYPES = {
    "DT_STRING": object,
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT64": np.int64,
    "DT_INT32": np.int32,
    "DT_UINT8": np.uint8,
}
DEFAULT_IMAGE_SIZE = 224


def check_feedable(signature: Signature) -> str:
    """The kind of image input the validator will send (``"jpeg"`` or ``"pixels"``); an
    InvalidModelError when it cannot feed this signature, so a fetch fails before any build."""
    if len(signature.inputs) != 1:
        raise InvalidModelError(
            f"signature {signature.name!r} takes {len(signature.inputs)} inputs "
            f"({', '.join(signature.inputs)}); the image validator needs exactly one image input"
        )
    ((alias, info),) = signature.inputs.items()
    if info.dtype == "DT_STRING":
        return "jpeg"
    if info.dtype in ("DT_FLOAT", "DT_HALF", "DT_DOUBLE", "DT_UINT8") and _is_image_shape(info):
        return "pixels"
    raise InvalidModelError(
        f"input {alias!r} of signature {signature.name!r} is {info.dtype} with shape {info.shape}; "
        "supported image inputs are a DT_STRING of JPEG bytes or a [batch, height, width, 3] tensor"
    )


def build_inputs(signature: Signature, jpeg: bytes) -> dict[str, np.ndarray]:
    """The request for one image, shaped by the model's own signature (no hard-coded names).

    A string input gets the raw JPEG bytes (the tutorial model); an image tensor input gets the
    decoded pixels resized to the signature's height and width.
    """
    kind = check_feedable(signature)
    ((alias, info),) = signature.inputs.items()
    if kind == "jpeg":
        return {alias: np.array([jpeg], dtype=object)}
    return {alias: _decode_image(jpeg, info)}


def _is_image_shape(info: TensorInfo) -> bool:
    return info.shape is not None and len(info.shape) == 4 and info.shape[-1] in (3, -1)


def _decode_image(jpeg: bytes, info: TensorInfo) -> np.ndarray:
    from PIL import Image

    shape = info.shape or [-1, -1, -1, 3]
    height = shape[1] if shape[1] > 0 else DEFAULT_IMAGE_SIZE
    width = shape[2] if shape[2] > 0 else DEFAULT_IMAGE_SIZE
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=NUMPY_DTYPES[info.dtype])[np.newaxis, ...]


def to_tensor_protos(inputs: dict[str, np.ndarray]) -> dict:
    tf = import_tensorflow()
    return {alias: tf.make_tensor_proto(value, shape=list(value.shape)) for alias, value in inputs.items()}

"""Warmup requests baked into the image, so a replica answers its first client as fast as the rest.

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``tensorflow.serving.PredictionLog``) before it reports the version AVAILABLE: the first real
request no longer pays for graph tracing and lazy allocation. The file holds the validation
request itself (the cat, shaped by the model's own signature), so it exercises exactly what
validation checks. Written without TensorFlow (``protos``), in the build task.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..serving.protos import CLASSES, ENUMS
from ..serving.requests import build_inputs
from ..serving.signature import Signature

log = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
PredictionLog = CLASSES["PredictionLog"]
DATA_TYPES = dict(ENUMS["DataType"])


def warmup_requests(model_name: str, signature: Signature, jpeg: bytes) -> bytes:
    """The warmup file's bytes: one ``PredictionLog`` holding validation's Predict request."""
    record = PredictionLog()
    request = record.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature.name
    for alias, value in build_inputs(signature, jpeg).items():
        tensor = request.inputs[alias]
        tensor.dtype = DATA_TYPES[signature.inputs[alias].dtype]
        for size in value.shape:
            tensor.tensor_shape.dim.add(size=size)
        if value.dtype == object:
            tensor.string_val.extend(value.ravel().tolist())
        else:  # what tf.make_tensor_proto writes for a numpy array: its little-endian bytes
            tensor.tensor_content = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    return tfrecord([record.SerializeToString(deterministic=True)])


def baked_entries(entries: list, root: Path, arcname: str, warmup: bytes | None) -> list:
    """The model layer's ``(name, path | bytes | None)`` entries plus the warmup file at
    ``<arcname>/assets.extra/``, unless there is none to add or the model ships its own (kept as is)."""
    if warmup is None:
        return entries
    extra = root / WARMUP_FILE
    if extra.exists() or extra.is_symlink():
        log.info("the model has its own %s; keeping it", WARMUP_FILE)
        return entries
    if extra.parent.exists() and not extra.parent.is_dir():
        log.warning("%s is not a directory; no warmup requests baked in", extra.parent)
        return entries
    added: list[tuple[str, bytes | None]] = [(f"{arcname}/{WARMUP_FILE}", warmup)]
    if not extra.parent.exists():
        added.append((f"{arcname}/{extra.parent.name}", None))
    log.info("warmup requests baked in as %s/%s (%d bytes)", arcname, WARMUP_FILE, len(warmup))
    # component order is the order tarball.tree walks in: a directory, then its sorted children
    return sorted([*entries, *added], key=lambda entry: entry[0].split("/"))


# ---- TFRecord framing (tensorflow/core/lib/io/record_writer.cc) -------------------------------


def tfrecord(records: Iterable[bytes]) -> bytes:
    """Each record as: uint64 length, masked crc32c of the length, data, masked crc32c of the data."""
    out = bytearray()
    for data in records:
        length = struct.pack("<Q", len(data))
        out += length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))
    return bytes(out)


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c_python(data: bytes) -> int:
    """Castagnoli CRC in pure Python: slow, but a warmup file is a few kilobytes."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # the C extension, when installed (the Google client libraries bring it)
    from google_crc32c import value as _crc32c_c

    def crc32c(data: bytes) -> int:
        return _crc32c_c(data)
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_python

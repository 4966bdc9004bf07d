"""The few TensorFlow / TF Serving protobuf messages the pipeline reads or writes, without TensorFlow.

``tensorflow_serving.apis`` and ``tensorflow.core`` import all of TensorFlow (about 5 s) for
their generated messages. The tasks that only read a SavedModel's signature, ask a server for
its model status or write warmup requests into an image need a handful of fields; they are
declared here with the upstream names and field numbers, so the bytes (and the text format) are
the same. Fields not declared are skipped by the parser. Each declaration says where upstream keeps the real one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "bytes": _F.TYPE_BYTES,
}
PACKAGE = "tfserving_deploy.serving.protos"

# tensorflow/core/framework/types.proto: DataType, in number order from 0; each has a _REF at +100.
_DATA_TYPES = (
    "INVALID",
    "FLOAT",
    "DOUBLE",
    "INT32",
    "UINT8",
    "INT16",
    "INT8",
    "STRING",
    "COMPLEX64",
    "INT64",
    "BOOL",
    "QINT8",
    "QUINT8",
    "QINT32",
    "BFLOAT16",
    "QINT16",
    "QUINT16",
    "UINT16",
    "COMPLEX128",
    "HALF",
    "RESOURCE",
    "VARIANT",
    "UINT32",
    "UINT64",
    "FLOAT8_E5M2",
    "FLOAT8_E4M3FN",
    "FLOAT8_E4M3FNUZ",
    "FLOAT8_E4M3B11FNUZ",
    "FLOAT8_E5M2FNUZ",
    "INT4",
    "UINT4",
    "INT2",
    "UINT2",
    "FLOAT4_E2M1FN",
)
ENUMS = {
    "DataType": [(f"DT_{n}", i) for i, n in enumerate(_DATA_TYPES)]
    + [(f"DT_{n}_REF", 100 + i) for i, n in enumerate(_DATA_TYPES) if i]
}

# message -> fields as "name number [repeated|map] type [oneof:<name>]"
MESSAGES = {
    # tensorflow_serving/apis/model.proto, get_model_status.proto; tensorflow_serving/util/status.proto
    "ModelSpec": ["name 1 string", "signature_name 3 string"],
    "GetModelStatusRequest": ["model_spec 1 ModelSpec"],
    "StatusProto": ["error_code 1 int32", "error_message 2 string"],
    "ModelVersionStatus": ["version 1 int64", "state 2 int32", "status 3 StatusProto"],
    "GetModelStatusResponse": ["model_version_status 1 repeated ModelVersionStatus"],
    # tensorflow/core/protobuf/saved_model.proto, meta_graph.proto, saver.proto, saved_object_graph.proto;
    # tensorflow/core/framework/tensor_shape.proto
    "SavedModel": ["meta_graphs 2 repeated MetaGraphDef"],
    "MetaGraphDef": [
        "meta_info_def 1 MetaInfoDef",
        "saver_def 3 SaverDef",
        "signature_def 5 map SignatureDef",
        "object_graph_def 7 SavedObjectGraph",
    ],
    "MetaInfoDef": ["tags 4 repeated string"],
    "SaverDef": ["filename_tensor_name 1 string"],
    "SavedObjectGraph": ["nodes 1 repeated SavedObject"],
    "SavedObject": ["variable 7 SavedVariable oneof:kind"],
    "SavedVariable": [],
    "SignatureDef": ["inputs 1 map TensorInfo", "outputs 2 map TensorInfo", "method_name 3 string"],
    "TensorInfo": ["name 1 string", "dtype 2 DataType", "tensor_shape 3 TensorShapeProto"],
    "TensorShapeProto": ["dim 2 repeated Dim", "unknown_rank 3 bool"],
    "Dim": ["size 1 int64", "name 2 string"],
    # tensorflow_serving/apis/prediction_log.proto, predict.proto; tensorflow/core/framework/tensor.proto
    # (warmup requests, written at build time: warmup.py)
    "PredictionLog": ["predict_log 6 PredictLog oneof:log_type"],
    "PredictLog": ["request 1 PredictRequest"],
    "PredictRequest": ["model_spec 1 ModelSpec", "inputs 2 map TensorProto"],
    "TensorProto": [
        "dtype 1 DataType",
        "tensor_shape 2 TensorShapeProto",
        "tensor_content 4 bytes",
        "string_val 8 repeated bytes",
    ],
}


def _add_field(message, spec: str) -> None:
    name, number, *rest = spec.split()
    oneof = next((r.split(":", 1)[1] for r in rest if r.startswith("oneof:")), None)
    rest = [r for r in rest if not r.startswith("oneof:")]
    label = _F.LABEL_REPEATED if rest[0] in ("repeated", "map") else _F.LABEL_OPTIONAL
    kind = rest[-1]
    field = message.field.add(name=name, number=int(number), label=label)
    if rest[0] == "map":  # a repeated nested XxxEntry {key = 1; value = 2} with map_entry set
        entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        _set_type(entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), kind)
        field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{message.name}.{entry.name}"
    else:
        _set_type(field, kind)
    if oneof:
        names = [o.name for o in message.oneof_decl]
        if oneof not in names:
            message.oneof_decl.add(name=oneof)
            names.append(oneof)
        field.oneof_index = names.index(oneof)


def _set_type(field, kind: str) -> None:
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_ENUM if kind in ENUMS else _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"


def _declare() -> dict[str, Any]:
    """Message classes in a pool of their own: no clash with TensorFlow's when both are loaded."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{PACKAGE}.proto", package=PACKAGE, syntax="proto3")
    for name, values in ENUMS.items():
        enum = file.enum_type.add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for spec in fields:
            _add_field(message, spec)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


CLASSES = _declare()
DATA_TYPE_NAMES = {number: name for name, number in ENUMS["DataType"]}

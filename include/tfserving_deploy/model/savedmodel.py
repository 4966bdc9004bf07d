"""Read a SavedModel's serving signature straight from its protobuf, without loading the graph.

Parsing ``saved_model.pb`` is fast and needs no ops to be registered; it is what TF Serving
itself reads to answer GetModelMetadata. The messages come from ``protos`` (the upstream field
numbers, no TensorFlow import: fetching a model costs no 5 s of import).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidModelError
from ..serving.protos import CLASSES, DATA_TYPE_NAMES
from ..serving.signature import Signature, TensorInfo
from .nofollow import is_regular, open_regular

SERVE_TAG = "serve"
MAX_SAVED_MODEL_BYTES = 2**31 - 1  # protobuf cannot parse a larger message


def read_signature(version_dir: str | Path, signature_name: str = "serving_default") -> Signature:
    """The named signature of the first ``serve`` meta graph, as plain data."""
    version_dir = Path(version_dir)
    saved_model = _load_saved_model(version_dir)

    meta_graph = next((mg for mg in saved_model.meta_graphs if SERVE_TAG in mg.meta_info_def.tags), None)
    if meta_graph is None:
        tag_sets = [sorted(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
        raise InvalidModelError(
            f"SavedModel {version_dir} has no meta graph tagged {SERVE_TAG!r} (tag sets: {tag_sets}); "
            "export it with tf.saved_model.save or tags=['serve']"
        )
    if signature_name not in meta_graph.signature_def:
        # "__saved_model_init_op" and the like are internal, not something to serve
        existing = sorted(k for k in meta_graph.signature_def if not k.startswith("__")) or ["(none)"]
        raise InvalidModelError(
            f"SavedModel {version_dir} has no signature {signature_name!r}; it has: "
            f"{', '.join(existing)}; pass one of those as signature_name or re-export the model"
        )
    _check_variables(version_dir, meta_graph)

    return signature_from_proto(signature_name, meta_graph.signature_def[signature_name])


def signature_from_proto(name: str, signature_def) -> Signature:
    """A ``SignatureDef`` proto (from a SavedModel or a server's GetModelMetadata) as plain data."""
    return Signature(
        name=name,
        method=signature_def.method_name,
        inputs={k: _tensor_info(v) for k, v in sorted(signature_def.inputs.items())},
        outputs={k: _tensor_info(v) for k, v in sorted(signature_def.outputs.items())},
    )


def _load_saved_model(version_dir: Path):
    """The SavedModel proto, read without following links. A parse error names the file and the
    position only: the bytes are untrusted and, were a link ever to slip through, could be any
    file of the worker (its environment, a key)."""
    from google.protobuf import message, text_format

    saved_model = CLASSES["SavedModel"]()
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            with open_regular(version_dir, name) as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_SAVED_MODEL_BYTES:
                    raise InvalidModelError(
                        f"{version_dir / name} is {size} bytes, over protobuf's limit of {MAX_SAVED_MODEL_BYTES}; "
                        "no TensorFlow can read it: re-export the model with its weights in variables/"
                    )
                data = f.read()
        except FileNotFoundError:
            continue
        path = version_dir / name
        try:
            if name == "saved_model.pb":
                saved_model.ParseFromString(data)
            else:
                text_format.Parse(data.decode(), saved_model, allow_unknown_field=True)
        except message.DecodeError:
            raise InvalidModelError(
                f"{path} ({len(data)} bytes) is not a valid binary SavedModel protobuf; "
                "re-export the model or re-check the artifact"
            ) from None
        except text_format.ParseError as e:
            raise InvalidModelError(
                f"{path} is not a valid text SavedModel protobuf (error at line {e.GetLine()}, column "
                f"{e.GetColumn()}); re-export the model or re-check the artifact"
            ) from None
        except UnicodeDecodeError as e:
            raise InvalidModelError(
                f"{path} is not UTF-8 text (invalid byte at offset {e.start}); re-export the model as saved_model.pb"
            ) from None
        return saved_model
    raise InvalidModelError(
        f"{version_dir} holds no saved_model.pb or saved_model.pbtxt (as regular files); "
        "point at the <version>/ directory of a SavedModel"
    )


def _check_variables(version_dir: Path, meta_graph) -> None:
    """A graph with variables is unservable without variables/variables.index next to it."""
    has_variables = bool(meta_graph.saver_def.filename_tensor_name) or any(
        node.WhichOneof("kind") == "variable" for node in meta_graph.object_graph_def.nodes
    )
    if has_variables and not is_regular(version_dir, "variables", "variables.index"):
        raise InvalidModelError(
            f"SavedModel {version_dir} has variables but no variables/variables.index; "
            "the tarball is incomplete, re-pack it with the variables/ directory"
        )


def _tensor_info(info) -> TensorInfo:
    """From a TensorInfo message: ours, or TensorFlow's (a server's GetModelMetadata)."""
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return TensorInfo(dtype=DATA_TYPE_NAMES.get(info.dtype, str(info.dtype)), shape=shape)

"""An offline stand-in for the tutorial's ResNet SavedModel (``resnet_v2_fp32_savedmodel_NHWC_jpg``).

The tutorial tarball cannot be downloaded here, so this module builds a small model with
*exactly the tutorial model's serving signature*, so that the whole pipeline (fetch, verify,
bake, deploy, validate with the original gRPC/REST client) can run against it:

    serving_default
      inputs:  image_bytes    DT_STRING [-1]          raw JPEG bytes, one per example
      outputs: classes        DT_INT64  [-1]          argmax of probabilities
               probabilities  DT_FLOAT  [-1, 1001]    softmax; index 0 is "background"

Inside: decode_jpeg -> resize to 64x64 -> a ResNet-style backbone (conv stem + 2 residual
blocks, fixed-seed random weights) -> global average pool -> a dense 1001-way softmax head.
The head is *fit* (softmax regression in numpy) on features of augmented crops / flips /
JPEG qualities / brightness of ``include/images/cat.jpg`` (label 286, "Egyptian cat") and
``include/images/coffee.jpg`` (label 967, "espresso"), plus synthetic noise / flat colour /
gradient images (label 0, background). So it answers 286 for the cat and 967 for the
espresso like the real ResNet does, but it is NOT ImageNet-accurate beyond those images:
any other photo gets an arbitrary one of {0, 286, 967}.

Everything is deterministic from ``seed``. ``pack_tutorial_tarball`` writes the tutorial's
layout ``./<top_dir>/<version>/{saved_model.pb,variables/...}`` (what
``tar --strip-components=2`` expects) and is byte-deterministic: it exports in a fresh
Python process (TF names traced functions with a process-global counter, so a second export
in the same process would differ in ``saved_model.pb``), drops TF's ``fingerprint.pb``
(it holds a random UUID; the tutorial model has none either) and writes the tar with sorted
members, mtime 0, uid/gid 0 and fixed modes, gzipped with mtime 0.

Two sizes (``size=``): ``small`` (above, about 200 KB: tests, demos) and ``tutorial``
(``tutorial_model.py``: ResNet-50 v2 at 224x224, about 100 MB, 100+ ms a CPU prediction, like the
tutorial's model; same signature, same head fit, same answers), for figures at the real size.
``cached_tarball`` packs either once and keeps it under ``.cache/demo-models``.

CLI::

    PYTHONPATH=demo:include python -m tfserving_demo --out /tmp/resnet_demo.tar.gz [--size tutorial]

This package is the demo's and the tests' stand-in, not part of the pipeline (``tfserving_deploy``):
it lives in ``demo/``, outside the installed packages and the deployed DAG folder.
TensorFlow is imported lazily inside functions; nothing here imports Airflow.
"""

from .model import CAT_CLASS, DEFAULT_TOP_DIR, ESPRESSO_CLASS, IMAGES_DIR, SIZES, TUTORIAL_VERSION, export_demo_model
from .serve import serve_directory
from .tarball import cached_tarball, pack_tutorial_tarball, sha256_file

__all__ = [
    "CAT_CLASS",
    "DEFAULT_TOP_DIR",
    "ESPRESSO_CLASS",
    "IMAGES_DIR",
    "SIZES",
    "TUTORIAL_VERSION",
    "cached_tarball",
    "export_demo_model",
    "pack_tutorial_tarball",
    "serve_directory",
    "sha256_file",
]

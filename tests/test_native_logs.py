"""Issue 18, item 7: TensorFlow's and gRPC's native chatter stays out of stderr (a worker shows each
stderr line as ERROR), real errors do not. Each check runs in a new interpreter, as a task does:
the native libraries print only when they first load. The DAG-level check is in test_dag_local_e2e."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tfserving_deploy.native_logs import QUIET_ENV, split_chatter

ROOT = Path(__file__).resolve().parents[1]

# What `import tensorflow` printed on this machine (TF 2.21, no GPU), with TF_CPP_MIN_LOG_LEVEL unset.
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796664832.751756   22595 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796664832.974142   22595 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796665248.447463    1783 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
2023-11-02 10:00:00.123456: W tensorflow/core/util/port.cc:113] oneDNN custom operations are on.
"""  # noqa: E501


def python(code: str, *, quiet_env: bool = False, path: list[str] | None = None) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter, with the native log levels unset (as a worker without them starts)."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([*(path or []), str(ROOT / "include"), str(ROOT / "plugins")])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_start_up_lines_are_chatter_other_lines_are_not():
    chatter, rest = split_chatter(START_UP)
    assert rest == [] and len(chatter) == 6, rest
    errors = (
        "E0000 00:00:1796665248.447463    1783 saved_model_loader.cc:12] SavedModel load failed\n"
        "  with this second line\n"
        "F0000 00:00:1796665248.447463    1783 cpu_info.cc:99] Check failed: AVX\n"
        "Traceback (most recent call last):\n"
    )
    chatter, rest = split_chatter("some text before any header\n" + START_UP + errors)
    assert chatter == split_chatter(START_UP)[0]
    assert rest == ["some text before any header", *errors.splitlines()]


def test_importing_tensorflow_through_the_helper_leaves_stderr_empty():
    plain = python("import tensorflow; tensorflow.config.list_physical_devices()")
    assert plain.returncode == 0 and "cudart_stub.cc" in plain.stderr, plain.stderr  # this TF does chatter
    quiet = python(
        "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)\n"
        "from tfserving_deploy.native_logs import import_tensorflow\n"
        "tf = import_tensorflow(); tf.constant([1.0]).numpy()\n"
        "from tfserving_deploy.serving.client import ServingClient\n"
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "DEBUG:tfserving_deploy.native_logs:" in quiet.stdout and "cudart_stub.cc" in quiet.stdout  # moved, kept


def test_a_failed_import_shows_what_it_printed(tmp_path):
    """A TensorFlow that dies while loading (here a stand-in package that prints and raises, as a broken
    install does): its output and the exception reach stderr, nothing is kept back."""
    broken = tmp_path / "tensorflow"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "os.write(2, b'E0000 00:00:1.0 1 loader.cc:1] libtensorflow_framework.so.2: cannot open\\n')\n"
        "raise ImportError('libtensorflow_framework.so.2: cannot open shared object file')\n"
    )
    code = "from tfserving_deploy.native_logs import import_tensorflow; import_tensorflow()"
    run = python(code, path=[str(tmp_path)])
    assert run.returncode == 1
    assert "loader.cc:1] libtensorflow_framework.so.2: cannot open" in run.stderr
    assert "cudart_stub.cc" in run.stderr and "ImportError: libtensorflow_framework.so.2" in run.stderr


def test_the_airflow_glue_quiets_grpc_before_it_loads():
    """gRPC prints an INFO line on stderr when a process forks while it has threads (its default level)."""
    fork = (
        "import grpc, os\n"
        "channel = grpc.insecure_channel('127.0.0.1:1')\n"
        "try:\n    grpc.channel_ready_future(channel).result(timeout=1)\nexcept grpc.FutureTimeoutError:\n    pass\n"
        "for _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n"
        "channel.close()\n"
    )
    assert "fork_posix.cc" in python(fork).stderr
    quiet = python("import tfserving_airflow\n" + fork)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr

"""TensorFlow's and gRPC's native chatter, kept out of the task log's errors.

An Airflow worker marks every line a task writes to stderr as ERROR. TensorFlow's C++ core and
gRPC write their INFO and WARNING lines there (``cudart_stub.cc: Could not find cuda drivers``,
``cpu_feature_guard.cc``, absl's ``WARNING: All log messages before absl::InitializeLog()``,
gRPC's ``fork_posix.cc``), and CUDA's device probe an E line on a machine without a GPU, so a
good run looked like six errors. ``import_tensorflow`` is the one way the library imports
TensorFlow: it sets the native log levels first (read once, when the libraries load), imports and
probes the devices with stderr captured, and moves those known lines to this module's DEBUG log.
Errors are not hidden: other ``E``/``F`` lines and anything not recognised go back to stderr
unchanged, and a failed import writes everything it printed back there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

log = logging.getLogger(__name__)

# Defaults only: an operator who sets them (e.g. TF_CPP_MIN_LOG_LEVEL=0 to debug) keeps theirs.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ core: errors only
    "GRPC_VERBOSITY": "ERROR",  # gRPC core: errors only (its default lets INFO through absl)
}

# absl's notice before its first line, printed once per native library that logs.
_ABSL_NOTICE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")
# The device probe's line on a machine without a GPU: an E line that only says "CPU it is".
_NO_GPU = re.compile(r"E\d{4} \d\d:\d\d:[\d.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")
# A native log line's header: absl's (``I0000 00:00:1796664832.75  123 file.cc:31] ``) or TensorFlow's older one.
_HEADER = re.compile(r"([IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) \S+:\d+\] ")

_lock = threading.Lock()


def quiet_native_logs() -> None:
    """Set the native libraries' log levels, unless set already; before TensorFlow or gRPC load."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, with its start-up chatter at DEBUG instead of on stderr."""
    loaded = sys.modules.get("tensorflow")
    if loaded is not None and hasattr(loaded, "__version__"):  # fully imported (not mid-import)
        return loaded
    with _lock:
        loaded = sys.modules.get("tensorflow")
        if loaded is not None and hasattr(loaded, "__version__"):
            return loaded
        quiet_native_logs()
        with tempfile.TemporaryFile() as sink:
            try:
                with _stderr_to(sink.fileno()):
                    import tensorflow

                    tensorflow.config.list_physical_devices()  # the device probe logs too: here, not mid-task
            except BaseException:
                sink.seek(0)
                _write_stderr(sink.read().decode(errors="replace"))
                raise
            sink.seek(0)
            chatter, rest = split_chatter(sink.read().decode(errors="replace"))
    if chatter:
        log.debug("TensorFlow's start-up output (stderr):\n%s", "\n".join(chatter))
    _write_stderr("".join(f"{line}\n" for line in rest))
    return tensorflow


def split_chatter(text: str) -> tuple[list[str], list[str]]:
    """(INFO/WARNING lines and absl's notice, everything else). A line without a header belongs to the
    message above it (``cpu_feature_guard`` spans two lines); one before any header is not chatter."""
    chatter: list[str] = []
    rest: list[str] = []
    quiet = False
    for line in text.splitlines():
        header = _HEADER.match(line)
        if _ABSL_NOTICE.fullmatch(line):
            quiet = True
        elif header:
            quiet = (header.group(1) or header.group(2)) in "IW" or bool(_NO_GPU.match(line))
        elif not line.strip():
            continue
        (chatter if quiet else rest).append(line)
    return chatter, rest


@contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """File descriptor 2 (what native code writes to) points at ``fd`` inside the block."""
    _flush_stderr()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)


def _flush_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _write_stderr(text: str) -> None:
    if text:
        stream = sys.stderr or sys.__stderr__
        if stream is not None:
            stream.write(text)
            stream.flush()

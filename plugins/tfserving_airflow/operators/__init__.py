"""Thin operators over ``tfserving_deploy``: each ``execute`` is a call into the library.

Heavy imports (tensorflow, docker, grpc) happen inside ``execute`` so DAG parsing stays fast.
Faults that a retry cannot fix (bad checksum, unsafe tarball, wrong answers) fail the task at
once; transient ones (network, registry, engine) go through the task's retries.
"""

from .deploy import (
    DeployModelOperator,
    EnsureClusterOperator,
    RollbackOperator,
    StartCandidateOperator,
    StopCandidateOperator,
)
from .image import BuildImageOperator, PushImageOperator
from .model import CheckForChangeOperator, FetchModelOperator
from .validate import ValidateModelOperator

__all__ = [
    "BuildImageOperator",
    "CheckForChangeOperator",
    "DeployModelOperator",
    "EnsureClusterOperator",
    "FetchModelOperator",
    "PushImageOperator",
    "RollbackOperator",
    "StartCandidateOperator",
    "StopCandidateOperator",
    "ValidateModelOperator",
]

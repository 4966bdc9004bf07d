"""The serving signature of a model, as plain data that travels through XCom."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: TF dtype name (``DT_STRING``) and shape (-1 = any; None = unknown rank)."""

    dtype: str
    shape: list[int] | None = None


@dataclass(frozen=True)
class Signature:
    name: str
    method: str = ""
    inputs: dict[str, TensorInfo] = field(default_factory=dict)
    outputs: dict[str, TensorInfo] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            name=data["name"],
            method=data.get("method", ""),
            inputs={k: TensorInfo(**v) for k, v in data["inputs"].items()},
            outputs={k: TensorInfo(**v) for k, v in data["outputs"].items()},
        )


def breaking_changes(serving: Signature, candidate: Signature) -> list[str]:
    """What in ``candidate`` breaks a client written for ``serving``; compatible changes pass.

    A client sends every input of the serving signature and reads its outputs. It breaks when an
    input or output it uses is gone (a rename is a removal), when a dtype changes, when the
    candidate needs an input the client does not send, when an input accepts less than before
    (a fixed size where any was fine, another rank), or when an output is less certain than
    before (any size where a fixed one was promised). New outputs and wider inputs pass.
    """
    changes = []
    if serving.method and candidate.method and serving.method != candidate.method:
        changes.append(f"method {serving.method} -> {candidate.method}")
    for kind, old_side, new_side, narrower in (
        ("input", serving.inputs, candidate.inputs, _accepts_less),
        ("output", serving.outputs, candidate.outputs, lambda old, new: _accepts_less(new, old)),
    ):
        for alias, old in sorted(old_side.items()):
            new = new_side.get(alias)
            if new is None:
                changes.append(f"{kind} {alias!r} removed (the candidate's {kind}s: {', '.join(sorted(new_side))})")
            elif new.dtype != old.dtype:
                changes.append(f"{kind} {alias!r}: dtype {old.dtype} -> {new.dtype}")
            elif narrower(old.shape, new.shape):
                changes.append(f"{kind} {alias!r}: shape {_shape(old.shape)} -> {_shape(new.shape)}")
    for alias in sorted(set(candidate.inputs) - set(serving.inputs)):
        changes.append(f"input {alias!r} added: clients of the serving model do not send it")
    return changes


def _accepts_less(old: list[int] | None, new: list[int] | None) -> bool:
    """Does shape ``new`` accept fewer tensors than ``old``? (-1: any size; None: any rank)"""
    if new is None:
        return False
    if old is None or len(old) != len(new):
        return True
    return any(n != -1 and n != o for o, n in zip(old, new, strict=True))


def _shape(shape: list[int] | None) -> str:
    return "unknown rank" if shape is None else "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"

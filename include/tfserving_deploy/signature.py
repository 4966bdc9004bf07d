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

"""The trigger form, generated from the library's declared settings: one ``Param`` per field.

Each field's JSON schema comes from its declaration (``tfserving_deploy.settings.Setting``): the
type (``null`` too when it may be unset), ``enum`` from a ``Literal`` or from the deployment's
allowlist, ``minimum``/``maximum``, ``pattern``, ``section``; the description and the form's
default (the allowlist's, or ``TFSERVING_RESNET_<NAME>``, else the declared one) too.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from tfserving_deploy.settings import Declared, Settings, allowlist, runtime_type

from .config import GROUPS

JSON_TYPES = {str: "string", int: "integer", bool: "boolean", dict: "object", tuple: "array"}


def params(groups: tuple[type[Settings], ...] = GROUPS) -> dict[str, Param]:
    """Every declared param of ``groups``, in declaration order."""
    return {declared.name: param(declared) for group in groups for declared in group.params()}


def param(declared: Declared) -> Param:
    default = declared.form_default()
    assert declared.setting is not None
    return Param(
        list(default) if isinstance(default, tuple) else default,  # JSON has arrays, not tuples
        description=declared.setting.description,
        **schema(declared),
    )


def schema(declared: Declared) -> dict[str, Any]:
    """The JSON schema of ``declared``'s values, as ``Param`` takes it."""
    rule = declared.setting
    assert rule is not None
    kind = runtime_type(declared.type)
    types = [JSON_TYPES[k] for k in kind] if isinstance(kind, tuple) else [JSON_TYPES[kind]]
    out: dict[str, Any] = {"type": ["null", *types] if declared.optional else types[0] if len(types) == 1 else types}
    if rule.allowlisted:
        out["enum"] = allowlist(declared.name, declared.default).choices
    elif declared.choices is not None:
        out["enum"] = list(declared.choices)
    if rule.minimum is not None:
        out["minimum"] = rule.minimum
    if rule.maximum is not None:
        out["maximum"] = rule.maximum
    if rule.min_length is not None:
        out["minLength"] = rule.min_length
    if rule.pattern is not None:
        out["pattern"] = rule.pattern
    if rule.items_pattern is not None:
        out["items"] = {"type": "string", "pattern": rule.items_pattern}
    out.update(rule.schema)
    if rule.section is not None:
        out["section"] = rule.section
    return out

"""Settings declared once: a frozen dataclass per concern, one ``setting(...)`` per field.

Each stage package declares its settings (``serving.server_config.ServerConfig``,
``targets.kubernetes.settings.KubernetesSettings``...). A field's declaration is everything about
it: name, type (``Literal`` for choices), default, description, bounds, pattern, form section,
whether the deployment allowlists it. From that one declaration come

* the trigger form (``tfserving_airflow.params`` turns each field into a JSON-schema ``Param``),
* the operators' template fields (``templated``: ``{{ params.<field> }}`` per field),
* parsing the rendered text back into typed values (``parse``, driven by the declared type), and
* the checks, run in ``__post_init__`` whoever builds the settings (``check_fields``), plus the
  cross-field rules a class adds in ``check``.

Templates render to text (``"3"``, ``"True"``, ``"None"``, ``"{'requests': ...}"``), and the
declared type decides what the text means: rendering templates as native objects instead would
turn a string param like a sha256 of zeros, or a name like ``1e5``, into a number.

Allowlisted fields (connection ids, the base image, the manifest directory: see ``allowlists``)
are checked in ``parse``, the run's entrance: a list chosen by whoever runs Airflow binds a
trigger's values, not a program that builds settings itself.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .allowlists import Allowlist
from .errors import InvalidParameter

UNSET = ("", "None")  # an unset param, rendered as text
FORM_DEFAULT_PREFIX = "TFSERVING_RESNET_"  # + PARAM: the deployment's form default (form_default)
SETTING = "tfserving_deploy.setting"  # the dataclass field metadata key of a declaration
S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Setting:
    """What the form shows and the checks enforce, beside the field's name, type and default."""

    description: str
    section: str | None = None  # the form's section; None: the top
    minimum: int | None = None  # integers (and a whole-number form of the value)
    maximum: int | None = None
    pattern: str | None = None  # strings, searched as JSON schema does (anchor it)
    min_length: int | None = None
    items_pattern: str | None = None  # every item of a list
    allowlisted: bool = False  # the deployment's list binds it (allowlists.ENV)
    form_default: bool = False  # TFSERVING_RESNET_<NAME> may set its default
    check: Callable[[Any], object] | None = None  # a further rule for the value: raises InvalidParameter
    schema: Mapping[str, Any] = field(default_factory=dict)  # more JSON schema for the form (object properties)


def setting(default: Any, description: str, **declared: Any) -> Any:
    """A settings field with its declaration (see ``Setting``)."""
    return field(default=default, metadata={SETTING: Setting(description, **declared)})


@dataclass(frozen=True)
class Declared:
    """A field as the form and the parser see it."""

    name: str
    type: Any
    default: Any
    setting: Setting | None  # None: not a param (a program sets it, e.g. a kubeconfig path)

    @property
    def choices(self) -> tuple | None:
        literal = _literal(self.type)
        return get_args(literal) if literal is not None else None

    @property
    def optional(self) -> bool:
        return _optional(self.type)

    def form_default(self) -> Any:
        """The form's default: the allowlist's, or ``TFSERVING_RESNET_<NAME>``, else the declared one."""
        if self.setting and self.setting.allowlisted:
            return allowlist(self.name, self.default).default
        if self.setting and self.setting.form_default:
            return form_default(self.name, self.default)
        return self.default


class Settings:
    """The base of every settings dataclass: declarations, parsing from rendered text, checks."""

    @classmethod
    def declarations(cls) -> list[Declared]:
        hints = typing.get_type_hints(cls)
        return [
            Declared(f.name, hints[f.name], f.default, f.metadata.get(SETTING))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.init
        ]

    @classmethod
    def params(cls) -> list[Declared]:
        """The fields that are params of the trigger form."""
        return [d for d in cls.declarations() if d.setting is not None]

    @classmethod
    def templated(cls) -> dict[str, str]:
        """Every param as a template rendered at run time (``parse`` reads the result)."""
        return {d.name: "{{ params.%s }}" % d.name for d in cls.params()}  # noqa: UP031 - Jinja braces

    @classmethod
    def parse(cls: type[S], rendered: Mapping[str, Any] | None) -> S:
        """The settings from rendered values (text or already typed); a missing or unset one is
        its default. Allowlisted ones must be on the deployment's list. InvalidParameter otherwise."""
        rendered = rendered or {}
        values = {}
        for declared in cls.declarations():
            value = parse_value(declared, rendered.get(declared.name))
            if declared.setting and declared.setting.allowlisted:
                policy = allowlist(declared.name, declared.default)
                value = policy.check(policy.default if value is None and not declared.optional else value)
            if value is not None or declared.optional:
                values[declared.name] = value
        return cls(**values)

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules across fields (InvalidParameter); every field is already valid on its own."""


def parse_value(declared: Declared, value: Any) -> Any:
    """``value`` as the declared type; unset (None, "", "None") is None. The one reading of text."""
    if value is None or (isinstance(value, str) and value.strip() in UNSET):
        return None
    kind = runtime_type(declared.type)
    name = declared.name
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "false"):
            return str(value).strip().lower() == "true"
        raise InvalidParameter(f"{name}={_shown(value)} is not true or false")
    if kind is int:
        return _whole_number(name, value)
    if kind == (int, str):  # a count or a text form such as a percentage
        text = str(value).strip()
        return int(text) if re.fullmatch(r"-?[0-9]+", text) else text
    if kind is dict:
        literal = _literal_eval(value)
        if not isinstance(literal, Mapping):
            raise InvalidParameter(f"{name}={_shown(value)} is not a mapping (e.g. {{'key': 1}})")
        return dict(literal)
    if kind is tuple:
        literal = _literal_eval(value)
        if isinstance(literal, str):  # comma-separated text
            literal = literal.split(",")
        if not isinstance(literal, list | tuple):
            raise InvalidParameter(f"{name}={_shown(value)} is not a list (e.g. ['10.0.0.0/8'])")
        return tuple(str(v).strip() for v in literal if str(v).strip())
    return str(value)


def check_fields(settings: Settings) -> None:
    """Each field against its declaration: type, choices, bounds, pattern, length, further rule."""
    for declared in type(settings).declarations():
        value = getattr(settings, declared.name)
        if isinstance(value, list) and runtime_type(declared.type) is tuple:  # a list given in code: kept immutable
            value = tuple(value)
            object.__setattr__(settings, declared.name, value)
        if value is None:
            if not declared.optional:
                raise InvalidParameter(f"{declared.name} is not set; give a value")
            continue
        _check_type(declared, value)
        rule = declared.setting
        if rule is None:
            continue
        name, shown = declared.name, _shown(value)
        if isinstance(value, int) and not isinstance(value, bool):
            low = rule.minimum if rule.minimum is not None else "-inf"
            high = rule.maximum if rule.maximum is not None else "inf"
            if (rule.minimum is not None and value < rule.minimum) or (
                rule.maximum is not None and value > rule.maximum
            ):
                raise InvalidParameter(f"{name}={shown}: need a whole number from {low} to {high}")
        if isinstance(value, str):
            if rule.min_length is not None and len(value) < rule.min_length:
                raise InvalidParameter(f"{name} is empty; give a value")
            if rule.pattern and declared.choices is None and not re.search(rule.pattern, value):
                raise InvalidParameter(f"{name}={shown} does not match {rule.pattern}")
        if rule.items_pattern and isinstance(value, tuple):
            for item in value:
                if not re.search(rule.items_pattern, item):
                    raise InvalidParameter(f"{name}: {_shown(item)} does not match {rule.items_pattern}")
        if rule.check is not None:
            rule.check(value)


def form_default(param: str, default: Any = None) -> Any:
    """The trigger form's default for ``param``: ``TFSERVING_RESNET_<PARAM>`` where the deployment
    sets it (the compose stack points it at its own model server, registry and base image, so a
    Trigger with the defaults works offline), else ``default``."""
    return os.environ.get(f"{FORM_DEFAULT_PREFIX}{param.upper()}", "").strip() or default


def allowlist(param: str, default: str | None) -> Allowlist:
    """The deployment's allowlist for ``param``, read from the environment now: at parse time for
    the form's choices, at run time for the check in ``Settings.parse``."""
    return Allowlist.from_environment(param, form_default(param, default))


def _check_type(declared: Declared, value: Any) -> None:
    choices, kind, name = declared.choices, runtime_type(declared.type), declared.name
    if choices is not None:
        if value not in choices:
            raise InvalidParameter(f"{name} {_shown(value)} is not one of {', '.join(map(str, choices))}")
        return
    if kind == (int, str):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InvalidParameter(f"{name}={_shown(value)} is not {_article(kind)}")


def _whole_number(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidParameter(f"{name}={_shown(value)} is not a whole number") from None


def _literal_eval(value: Any) -> Any:
    """A list or dict given as itself or as its rendered text (Python or JSON literal syntax)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _members(hint: Any) -> tuple:
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return get_args(hint)
    return (hint,)


def _optional(hint: Any) -> bool:
    return type(None) in _members(hint)


def _literal(hint: Any) -> Any:
    found = [m for m in _members(hint) if get_origin(m) is Literal]
    return found[0] if found else None


def runtime_type(hint: Any) -> Any:
    """The runtime type a value of ``hint`` has: str, int, bool, dict, tuple, or (int, str)."""
    members = [m for m in _members(hint) if m is not type(None)]
    kinds = tuple(dict.fromkeys(get_origin(m) or m for m in members))
    if kinds == (Literal,):
        return str
    if set(kinds) == {int, str}:
        return (int, str)
    (kind,) = kinds
    return {Mapping: dict}.get(kind, kind)


def _article(kind: Any) -> str:
    names = {str: "text", int: "a whole number", bool: "true or false", dict: "a mapping", tuple: "a list of text"}
    return names.get(kind, "a whole number or text") if not isinstance(kind, tuple) else "a whole number or text"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."

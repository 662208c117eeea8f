"""How a method's settings become params.yaml validation: the fields of its Config dataclass
(rvpt.settings: each with its type, default and bounds, declared once in rvpt/) turned into a
pydantic section with one-line errors, which the method's own Config then checks once more."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import Field, Strict as StrictType, TypeAdapter, ValidationError, create_model, model_validator

from pipeline.config.data import Strict
from rvpt.errors import BadInput, shown
from rvpt.settings import settings


def relaxed(annotation):
    """The annotation for pydantic's strict mode, where YAML gives a list for a tuple: the tuple
    itself lax, each of its items strict."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return Annotated[tuple[tuple(strict(a) for a in args)], StrictType(False)]
    if origin is tuple:
        return Annotated[tuple[strict(args[0]), ...], StrictType(False)]
    if origin in (Union, types.UnionType):
        return Union[tuple(relaxed(a) for a in args)]
    return annotation


def strict(annotation):
    """A tuple's item, strict where pydantic can be (a Literal is exact already)."""
    return annotation if typing.get_origin(annotation) is Literal else Annotated[annotation, StrictType()]


def bounded(annotation, bounds: dict):
    """Bounds apply to the value itself, not to the None an optional setting may take."""
    if not bounds:
        return annotation
    args = typing.get_args(annotation)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return Union[Annotated[Union[tuple(inner)], Field(**bounds)], None]
    return Annotated[annotation, Field(**bounds)]


def fields_of(config_class) -> dict[str, tuple]:
    """pydantic field definitions of a Config dataclass's settings."""
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in settings(config_class):
        default = ... if f.default is dataclasses.MISSING else f.default
        out[f.name] = (bounded(relaxed(hints[f.name]), f.metadata["bounds"]),
                       Field(default, description=f.metadata["doc"] or None))
    return out


class Checked(Strict):
    """A section of settings that a library Config checks once more itself (orderings, choices)."""

    _config: typing.ClassVar[type] = None

    @model_validator(mode="after")
    def _by_the_method(self):
        self._config(**self.settings())
        return self

    def settings(self) -> dict[str, Any]:
        """The values the library's Config takes: its settings (not `kind`, nor a section's own extras)."""
        return {f.name: getattr(self, f.name) for f in settings(self._config)}


def section(config_class, name: str, **extra):
    model = create_model(name, __base__=Checked, **fields_of(config_class), **extra)
    model._config = config_class
    return model


def describe(error: ValidationError, tags: tuple[str, ...] = ()) -> str:
    """The first error as `key.path: message (got value)`, without a discriminated union's tag."""
    first = error.errors()[0]
    loc = [part for i, part in enumerate(first["loc"]) if not (i == 2 and part in tags)]
    where = ".".join(shown(part) if not isinstance(part, str) else part[:60] for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    given = "" if isinstance(got, dict) or got is None else f" (got {shown(got)})"
    return f"{where}: {message}{given}" if where else message


def culprit(described: str, source: str, flags: dict[str, str] | None) -> str:
    """The one-line error: naming the command-line option that set the failing key, else the file."""
    key = described.split(":", 1)[0]
    flag = next((flags[k] for k in sorted(flags or {}, key=len, reverse=True) if f"{key}.".startswith(f"{k}.")), None)
    return f"option {flag} ({described})" if flag else f"{source}: {described}"


def validated(block_type, raw, path: tuple[str, ...], params, tags: tuple[str, ...] = ()):
    """One block of params.yaml (at `path`, e.g. ("defenses", "rvpt")) validated as `block_type` on
    its own, where it is used: BadInput naming the option or the file, and the key's path."""
    nested_type, nested = block_type, raw
    for key in reversed(path):
        nested_type, nested = dict[str, nested_type], {key: nested}
    try:
        found = TypeAdapter(nested_type).validate_python(nested)
    except ValidationError as error:
        raise BadInput(culprit(describe(error, tags), params._source, params._flags)) from None
    for key in path:
        found = found[key]
    return found

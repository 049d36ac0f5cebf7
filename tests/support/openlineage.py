"""OpenLineage events checked against the spec as the OpenLineage Python client models it.

openlineage-python ships no JSON schema file, but its ``openlineage.client.event_v2`` /
``facet_v2`` classes are generated from the spec's JSON schemas (``OpenLineage.json`` 2-0-2 and each
facet's schema). So each JSON event is structured back into those attrs classes, strictly, and must
serialize back to the same JSON with the client's ``Serde`` (see :func:`parse_event`).
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import pkgutil
import types
import typing
from typing import Any
from urllib.parse import urlparse

import attr
from openlineage.client.event_v2 import RunEvent


class InvalidEvent(ValueError):
    """An event the OpenLineage client's spec classes do not accept."""


def _facet_classes() -> dict[str, type]:
    """Every facet class the client generates from the spec, by the schema URL it writes."""
    from openlineage.client import generated
    from openlineage.client.generated.base import BaseFacet

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(generated.__path__):
        module = importlib.import_module(f"{generated.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseFacet) and attr.has(value):
                found.setdefault(value._get_schema(), value)
    return found


FACETS = _facet_classes()


def _uri(value: str, where: str) -> None:
    if not urlparse(value).scheme:
        raise InvalidEvent(f"{where}: {value!r} is not a URI (spec format 'uri')")


def _structure(value: Any, hint: Any, where: str) -> Any:
    """``value`` (parsed JSON) as an instance of the client's type ``hint``; nothing may be left over."""
    from openlineage.client.generated.base import BaseFacet

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _structure(value, inner, where)
    if hint is typing.Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InvalidEvent(f"{where}: expected an array, got {value!r}")
        return [_structure(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidEvent(f"{where}: expected an object, got {value!r}")
        return {k: _structure(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise InvalidEvent(f"{where}: {value!r} is not one of {[e.value for e in hint]}") from None
    if isinstance(hint, type) and attr.has(hint):
        if not isinstance(value, dict):
            raise InvalidEvent(f"{where}: expected an object, got {value!r}")
        cls = hint
        if issubclass(hint, BaseFacet):  # a facet names its own schema; it must be a facet of this kind
            url = value.get("_schemaURL")
            cls = FACETS.get(url)
            if cls is None or not issubclass(cls, hint):
                raise InvalidEvent(f"{where}: _schemaURL {url!r} names no {hint.__name__} of the spec")
            _uri(value.get("_producer", ""), f"{where}._producer")
            _uri(url, f"{where}._schemaURL")
        return _make(cls, value, where)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise InvalidEvent(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def _make(cls: type, value: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attr.fields(cls)}
    unknown = set(value) - set(fields)
    if unknown:
        raise InvalidEvent(f"{where}: {sorted(unknown)} not in the spec's {cls.__name__}")
    kwargs = {}
    for name, field in fields.items():
        if not field.init:  # computed by the class (the schema URLs): compared after the round trip
            continue
        if name in value:
            kwargs[field.alias] = _structure(value[name], hints[name], f"{where}.{name}")
        elif field.default is attr.NOTHING:
            raise InvalidEvent(f"{where}: required {name!r} of {cls.__name__} is missing")
    try:
        return cls(**kwargs)  # the client's validators: uuid run ids, ISO date-times, ...
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{where}: {cls.__name__} rejects it: {exc}") from exc


def _pruned(value: Any) -> Any:
    """Without empty objects and arrays: the client writes ``facets: {}`` / ``inputs: []`` for absent ones."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def parse_event(event: dict) -> RunEvent:
    """A JSON run event as the client's ``RunEvent`` (openlineage.client.event_v2).

    openlineage-python ships no JSON schema file; its classes are generated from the spec's schema
    (OpenLineage.json and the facet schemas). So an event is valid when it structures into those
    classes with no field left over, none missing, every type right, each facet's ``_schemaURL``
    naming a facet class of the right kind, the classes' validators passing, and when the client's
    own serializer gives back exactly the same JSON (which also checks every schema URL).
    """
    from openlineage.client.serde import Serde

    if not isinstance(event, dict):
        raise InvalidEvent(f"an event is a JSON object, not {event!r}")
    parsed = _make(RunEvent, event, "event")
    again = Serde.to_dict(parsed)
    if _pruned(again) != _pruned(event):
        raise InvalidEvent(f"the event does not round-trip through the client: {again} != {event}")
    return parsed


def validate_event(event: dict) -> None:
    """Valid under the spec's RunEvent as the OpenLineage client models it, formats included."""
    parsed = parse_event(event)  # facets' URIs are checked on the way
    # The string formats the spec declares and the client's validators leave loose: RFC 3339
    # date-times carry an offset, and the producer and schema URLs are URIs.
    when = dt.datetime.fromisoformat(parsed.eventTime)
    if when.tzinfo is None:
        raise InvalidEvent(f"eventTime {parsed.eventTime!r} has no UTC offset (RFC 3339)")
    _uri(parsed.producer, "producer")
    _uri(parsed.schemaURL, "schemaURL")

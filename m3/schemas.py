"""Artifact schemas, declared in ``data_specs/schemas.yaml`` and enforced when writing."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

CODE_DATA = ("data_specs/schemas.yaml",)  # read at run time: part of every stage key that imports this
SCHEMAS_FILE = Path(__file__).resolve().parent.parent / CODE_DATA[0]
_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


@functools.cache
def declared(kind: str) -> dict[str, Any]:
    specs = yaml.safe_load(SCHEMAS_FILE.read_text(encoding="utf-8"))
    if kind not in specs:
        raise KeyError(f"no schema for artifact kind {kind!r} in {SCHEMAS_FILE}")
    return specs[kind]


def arrow_schema(kind: str) -> pa.Schema:
    columns = declared(kind)["columns"]
    return pa.schema([pa.field(name, _TYPES[typ]) for name, typ in columns.items()])

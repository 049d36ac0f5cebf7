"""Reading and writing artifact files (Parquet, JSON lines) in local folders.

Writers take the declared schema (``data_specs/schemas.yaml``): missing columns are an error (unless
the schema gives the column a default), extra columns are dropped, types are cast, so every
artifact of a kind reads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from m3.schemas import arrow_schema, declared


def _table(df: pd.DataFrame, kind: str) -> pa.Table:
    schema = arrow_schema(kind)
    defaults = {c: v for c, v in (declared(kind).get("defaults") or {}).items() if c not in df.columns}
    if defaults:
        df = df.assign(**{c: [v] * len(df) for c, v in defaults.items()})
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise ValueError(f"{kind}: missing columns {missing}")
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def write_table(df: pd.DataFrame, kind: str, out_dir: Path, rows_per_file: int = 50_000) -> dict[str, int]:
    """Write ``df`` as Parquet under ``out_dir`` (partitioned if the schema says so).

    Returns {artifact path: rows}; paths look like ``lang=ko/part-00000.parquet``.
    """
    spec = declared(kind)
    written: dict[str, int] = {}
    key = spec.get("partition_by")
    groups: list[tuple[Any, Any]] = [(None, df)]
    if key:
        groups = sorted(df.groupby(key, sort=True), key=lambda g: g[0])
    for value, part in groups:
        prefix = f"{key}={value}/" if key else ""
        for i, start in enumerate(range(0, max(len(part), 1), rows_per_file)):
            chunk = part.iloc[start : start + rows_per_file]
            rel = f"{prefix}part-{i:05d}.parquet"
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(chunk, kind), path, compression="zstd")
            written[rel] = len(chunk)
    return written


def read_table(folder: Path, kind: str) -> pd.DataFrame:
    """All Parquet files of an artifact folder, in path order."""
    files = sorted(p for p in Path(folder).rglob("*.parquet"))
    if not files:
        return arrow_schema(kind).empty_table().to_pandas()
    frames = [pq.read_table(f, schema=arrow_schema(kind)).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True)


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc


def schema_dict(kind: str) -> dict[str, Any]:
    return dict(declared(kind))

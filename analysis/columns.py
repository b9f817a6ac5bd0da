"""Typing the tables: the Arrow kind of every setting column (from the config dataclasses' annotations), DataFrames
with the documented columns first and in type, and their atomic Parquet writes with stable Arrow types."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["DICT", "is_number", "setting_types", "to_arrow", "typed_frame", "write_parquet"]


def setting_types() -> dict[str, str]:
    """Arrow kind of every setting: 'float', 'int', 'bool', 'str', 'list' (from the dataclass annotations)."""
    from trainables.config import TrainConfig
    from trainables.methods import METHODS

    kinds: dict[str, str] = {}
    for cls in [TrainConfig, *(m.Config for m in METHODS.values())]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds.setdefault(f.name, _kind(hints[f.name]))
    return kinds


def _kind(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return "str"
    if origin is tuple:
        return "list"
    if origin is not None and args:  # Optional[X] / X | None
        return _kind(args[0])
    return {float: "float", int: "int", bool: "bool", str: "str"}.get(annotation, "str")


def is_number(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return "category"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return "str"


def typed_frame(
    rows: list[dict], schema: list[tuple[str, pa.DataType, str]], kinds: Mapping[str, str]
) -> pd.DataFrame:
    """A DataFrame with the documented columns first, in order and type, then the setting and extra columns."""
    df = pd.DataFrame(rows)
    documented = {name: _arrow_kind(t) for name, t, _ in schema}
    for name in documented:
        if name not in df:
            df[name] = None
    extra = [c for c in df.columns if c not in documented]
    df = df[[*documented, *extra]]
    for col in df.columns:
        kind = documented.get(col) or {
            "float": "float",
            "int": "int",
            "bool": "bool",
            "str": "category",
            "list": "str",
        }.get(kinds.get(col, ""), None)
        if kind is None:
            kind = (
                "float"
                if all(is_number(v) or v is None or (isinstance(v, float) and math.isnan(v)) for v in df[col])
                else "str"
            )
        df[col] = _cast(df[col], kind)
    return df


def _cast(s: pd.Series, kind: str) -> pd.Series:
    if kind == "float":
        return pd.to_numeric(s, errors="coerce").astype("float64")
    if kind == "int":
        return pd.to_numeric(s, errors="coerce").astype("Int64")
    if kind == "bool":
        return s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else bool(v)).astype(
            "boolean"
        )
    if kind == "category":
        return s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype(
            "category"
        )
    if kind == "timestamp":
        return pd.to_datetime(s, utc=True).astype("datetime64[s, UTC]")
    return s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).astype("string")


DICT = pa.dictionary(pa.int32(), pa.string())


def to_arrow(df: pd.DataFrame, documented: list[tuple[str, pa.DataType, str]] = ()) -> pa.Table:
    """The Arrow table with the documented types, and plain ``string`` / ``dictionary<int32, string>`` elsewhere
    (pandas would pick large_string and narrow dictionary indices, which vary with the data)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    types = {name: t for name, t, _ in documented}
    fields = []
    for f in table.schema:
        t = types.get(f.name, f.type)
        if f.name not in types:
            if pa.types.is_large_string(t):
                t = pa.string()
            elif pa.types.is_dictionary(t):
                t = DICT
            elif pa.types.is_null(t):
                t = pa.string()
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def write_parquet(df: pd.DataFrame, path: Path, documented: list[tuple[str, pa.DataType, str]] = ()) -> None:
    """Write ``df`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_arrow(df, documented)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Feature hashing: one spec, shared by Spark (training tables) and plain Python (tests, scoring).

A field's id is ``pmod(h, buckets)`` where ``h`` is Spark's built-in ``xxhash64`` over typed values, chained:
XXH64 (seed 42) of the literal ``<namespace>\\x1f<spec seed>``, then of each non-null value with the previous hash
as seed, then of int bit masks of the null positions, 31 per int (so null != "", and (null, x) != (x, null) in a
cross).
Values hash by type: strings as their UTF-8 bytes, integers and booleans as 8-byte longs, the rounded floats of
dup_key as 8-byte doubles. So int 3 and string "3" get different ids: a column's type is fixed by its table's
schema. Hashing typed values is about half the CPU of building one canonical string per field (scheme 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import struct
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import reduce
from pathlib import Path
from typing import Any

import yaml

SPARK_XXHASH_SEED = 42
SEPARATOR = "\x1f"
# Version of the id function, saved with every features table: ids of two schemes are not comparable.
HASH_SCHEME = 2
MASK_BITS = 31  # null positions per int mask (a dup_key over many columns hashes several masks)
DUP_FLOAT_LIMIT = 1e15
_CANONICAL_NAN_BITS = 0x7FF8000000000000  # Java's doubleToLongBits of every NaN
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
SPEC_FILE_NAME = "_hashing_spec.json"


def table_spec_path(root: str, table: str) -> Path:
    """Where hash-features saves the spec of a features table (training and scoring read it from here)."""
    from cvr.storage.tables import table_path

    return Path(table_path(root, table)) / SPEC_FILE_NAME


DENSE_TRANSFORMS = ("identity", "log1p")
LABEL_COLUMNS = ("click", "micro", "macro", "conversion")
# Columns that only exist after the impression (post-click behaviour, event ids): never features.
POST_CLICK_COLUMNS = (
    "click_id",
    "behaviour_id",
    "conversion_id",
    "kind",
    "action",
    "amount",
    "view_pictures",
    "read_reviews",
    "ask_seller",
    "cart",
    "favourite",
)
TRUTH_COLUMNS = ("p_click", "p_micro", "p_macro", "p_cvr", "p_ctcvr")


class HashingSpecError(ValueError):
    """A hashing spec is invalid or would leak labels; the message names the spec file, field and column."""


# --- XXH64, bit-compatible with Spark's XXH64.hashUnsafeBytes -------------------------------------------------

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _MASK
    return (_rotl(acc, 31) * _P1) & _MASK


def _merge_round(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _MASK


def xxh64(data: bytes, seed: int = SPARK_XXHASH_SEED) -> int:
    """XXH64 of `data` as a signed 64-bit int (the value Spark's xxhash64 returns)."""
    length = len(data)
    pos = 0
    seed &= _MASK
    if length >= 32:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed
        v4 = (seed - _P1) & _MASK
        while pos <= length - 32:
            a, b, c, d = struct.unpack_from("<4Q", data, pos)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            pos += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = _merge_round(h, v)
    else:
        h = (seed + _P5) & _MASK
    h = (h + length) & _MASK
    while pos <= length - 8:
        (lane,) = struct.unpack_from("<Q", data, pos)
        h ^= _round(0, lane)
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK
        pos += 8
    if pos <= length - 4:
        (lane,) = struct.unpack_from("<I", data, pos)
        h ^= (lane * _P1) & _MASK
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK
        pos += 4
    while pos < length:
        h ^= (data[pos] * _P5) & _MASK
        h = (_rotl(h, 11) * _P1) & _MASK
        pos += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    h ^= h >> 32
    return h - (1 << 64) if h >= (1 << 63) else h


# --- the spec -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseField:
    name: str
    columns: tuple[str, ...]  # one column for a plain field, two or more for a cross
    buckets: int


@dataclass(frozen=True)
class DenseFeature:
    name: str
    column: str
    transform: str = "identity"
    fill: float = 0.0


@dataclass(frozen=True)
class HashingSpec:
    seed: int
    user_column: str
    fields: tuple[SparseField, ...]
    dense: tuple[DenseFeature, ...] = ()
    source: str = field(default="<inline>", compare=False)

    @property
    def sparse_columns(self) -> list[str]:
        return [f"f_{f.name}" for f in self.fields]

    @property
    def dense_columns(self) -> list[str]:
        return [f"x_{d.name}" for d in self.dense]

    @property
    def raw_columns(self) -> list[str]:
        """Every raw column the spec reads, in a stable order (the tuple behind dup_key)."""
        seen: dict[str, None] = {}
        for f in self.fields:
            seen.update(dict.fromkeys(f.columns))
        for d in self.dense:
            seen[d.column] = None
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash_scheme": HASH_SCHEME,
            "seed": self.seed,
            "user_column": self.user_column,
            "fields": [{"name": f.name, "columns": list(f.columns), "buckets": f.buckets} for f in self.fields],
            "dense": [asdict(d) for d in self.dense],
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _require(cond: bool, source: str, where: str, message: str) -> None:
    if not cond:
        raise HashingSpecError(f"{source}: {where}: {message}")


def _parse_sparse(entry: Any, where: str, source: str, is_cross: bool) -> SparseField:
    _require(isinstance(entry, dict), source, where, f"expected a mapping, got {entry!r}")
    name = entry.get("name")
    _require(
        isinstance(name, str) and name.isidentifier(), source, where, f"'name' must be an identifier, got {name!r}"
    )
    # 'columns' is how the saved JSON spells every field; YAML fields may say 'column' (default: the name).
    columns = entry.get("columns", [entry.get("column", name)])
    least = 2 if is_cross else 1
    ok = isinstance(columns, list) and len(columns) >= least and all(isinstance(c, str) for c in columns)
    _require(ok, source, f"{where} ({name})", f"'columns' must list {least}+ column names, got {columns!r}")
    buckets = entry.get("buckets")
    ok = isinstance(buckets, int) and not isinstance(buckets, bool) and 2 <= buckets <= 2**40
    _require(ok, source, f"{where} ({name})", f"'buckets' must be an integer in [2, 2**40], got {buckets!r}")
    return SparseField(name=name, columns=tuple(columns), buckets=buckets)


def _parse_dense(entry: Any, where: str, source: str) -> DenseFeature:
    _require(isinstance(entry, dict), source, where, f"expected a mapping, got {entry!r}")
    name = entry.get("name")
    _require(
        isinstance(name, str) and name.isidentifier(), source, where, f"'name' must be an identifier, got {name!r}"
    )
    column = entry.get("column", name)
    transform = entry.get("transform", "identity")
    _require(transform in DENSE_TRANSFORMS, source, f"{where} ({name})", f"'transform' must be one of {DENSE_TRANSFORMS}, got {transform!r}")  # fmt: skip
    fill = entry.get("fill", 0.0)
    _require(isinstance(fill, (int, float)) and not isinstance(fill, bool), source, f"{where} ({name})", f"'fill' must be a number, got {fill!r}")  # fmt: skip
    return DenseFeature(name=name, column=column, transform=transform, fill=float(fill))


def leakage_reason(column: str) -> str | None:
    """Why `column` may not be a feature (label, count of a label, truth, post-click), or None if it may."""
    if column in LABEL_COLUMNS or column.startswith("n_"):
        return "is a label (or a count of a label)"
    if column in TRUTH_COLUMNS or column.startswith("p_"):
        return "is a simulator truth column"
    if column in POST_CLICK_COLUMNS:
        return "is a post-click behaviour, not known at impression time"
    return None


def check_leakage(spec: HashingSpec) -> None:
    """Refuse a spec that feeds labels, truth or post-click behaviour to the model."""
    uses = [(f"field '{f.name}'", c) for f in spec.fields for c in f.columns]
    uses += [(f"dense '{d.name}'", d.column) for d in spec.dense]
    for where, column in uses:
        reason = leakage_reason(column)
        if reason:
            raise HashingSpecError(f"{spec.source}: {where} uses column '{column}', which {reason}; refusing the spec (label leakage)")  # fmt: skip


def spec_from_dict(data: dict[str, Any], source: str = "<inline>") -> HashingSpec:
    _require(isinstance(data, dict), source, "top level", "expected a mapping")
    known = {"hash_scheme", "seed", "user_column", "fields", "crosses", "dense"}
    unknown = set(data) - known
    _require(not unknown, source, "top level", f"unknown keys {sorted(unknown)} (expected {sorted(known)})")
    scheme = data.get("hash_scheme", HASH_SCHEME)
    _require(scheme == HASH_SCHEME, source, "hash_scheme", f"ids were hashed with scheme {scheme!r}, this code hashes with scheme {HASH_SCHEME}; re-run hash-features into a new table (features.table)")  # fmt: skip
    seed = data.get("seed")
    _require(isinstance(seed, int) and not isinstance(seed, bool), source, "seed", f"must be an integer, got {seed!r}")
    user_column = data.get("user_column")
    _require(isinstance(user_column, str), source, "user_column", f"must be a column name, got {user_column!r}")
    fields = [_parse_sparse(e, f"fields[{i}]", source, False) for i, e in enumerate(data.get("fields") or [])]
    fields += [_parse_sparse(e, f"crosses[{i}]", source, True) for i, e in enumerate(data.get("crosses") or [])]
    _require(bool(fields), source, "fields", "the spec needs at least one sparse field")
    dense = [_parse_dense(e, f"dense[{i}]", source) for i, e in enumerate(data.get("dense") or [])]
    names = [f.name for f in fields] + [d.name for d in dense]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _require(not dupes, source, "fields", f"feature names must be unique, repeated: {dupes}")
    spec = HashingSpec(seed=seed, user_column=user_column, fields=tuple(fields), dense=tuple(dense), source=source)
    check_leakage(spec)
    return spec


def load_spec(path: str | Path) -> HashingSpec:
    """Read a spec from YAML (conf/features/*.yaml) or JSON (the copy saved beside a features table)."""
    path = Path(path)
    if not path.is_file():
        raise HashingSpecError(f"{path}: hashing spec file not found")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise HashingSpecError(f"{path}: not valid YAML/JSON: {exc}") from exc
    return spec_from_dict(data, str(path))


def spec_to_json(spec: HashingSpec) -> str:
    return json.dumps({**spec.to_dict(), "digest": spec.digest()}, indent=2, sort_keys=True)


def spec_from_json_text(text: str, source: str) -> HashingSpec:
    """A spec saved beside a table; one saved before schemes were recorded was hashed with scheme 1."""
    data = json.loads(text)
    data.pop("digest", None)
    data.setdefault("hash_scheme", 1)
    return spec_from_dict(data, source)


# --- the Python twin ----------------------------------------------------------------------------------------


def _value_bytes(value: Any, where: str) -> bytes:
    """The bytes Spark's xxhash64 hashes for a non-null value: UTF-8, or 8 little-endian bytes of a long/double."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, float):
        bits = _CANONICAL_NAN_BITS if math.isnan(value) else struct.unpack("<q", struct.pack("<d", value + 0.0))[0]
        return struct.pack("<q", bits)  # + 0.0: -0.0 hashes as 0.0, as in Spark
    if isinstance(value, int):  # bool included: Spark side casts booleans to bigint
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise ValueError(f"{where}: integer {value} does not fit a 64-bit long")
        return struct.pack("<q", int(value))
    raise TypeError(f"{where}: cannot hash a {type(value).__name__} value {value!r} (strings and integers only)")


def hash_values(namespace: str, seed: int, values: list[Any]) -> int:
    """The chained xxhash64 of `values` (module doc); floats are refused: ids of floats depend on rounding."""
    for value in values:
        if isinstance(value, float):
            raise TypeError(f"float value {value!r} cannot be hashed consistently; make it a dense feature or bucket it")  # fmt: skip
    return _chained_hash(namespace, seed, values)


def _chained_hash(namespace: str, seed: int, values: list[Any]) -> int:
    h = xxh64(f"{namespace}{SEPARATOR}{seed}".encode())
    for value in values:
        if value is not None:
            h = xxh64(_value_bytes(value, namespace), h)
    for start in range(0, len(values), MASK_BITS):
        chunk = values[start : start + MASK_BITS]
        h = xxh64(struct.pack("<i", sum(1 << i for i, v in enumerate(chunk) if v is None)), h)
    return h


def bucket_of(spec: HashingSpec, sparse: SparseField, row: dict[str, Any]) -> int:
    return hash_values(sparse.name, spec.seed, [row.get(c) for c in sparse.columns]) % sparse.buckets


def dense_value(feature: DenseFeature, value: Any) -> float:
    """The float32-rounded dense value, as the Spark side computes it."""
    x = feature.fill if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    if feature.transform == "log1p":
        x = math.log1p(max(x, 0.0))
    return struct.unpack("<f", struct.pack("<f", x))[0]


def hash_row(spec: HashingSpec, row: dict[str, Any]) -> dict[str, Any]:
    """Python twin of hash_features for one samples row: user_key, dup_key, f_* ids and x_* values."""
    out: dict[str, Any] = {
        "user_key": hash_values("__user__", spec.seed, [row.get(spec.user_column)]),
        "dup_key": _chained_hash("__dup__", spec.seed, [_dup_value(row.get(c)) for c in spec.raw_columns]),
    }
    for sparse in spec.fields:
        out[f"f_{sparse.name}"] = bucket_of(spec, sparse, row)
    for feature in spec.dense:
        out[f"x_{feature.name}"] = dense_value(feature, row.get(feature.column))
    return out


def _dup_value(value: Any) -> Any:
    """dup_key covers dense raw values too: floats rounded half-up to 6 decimals, as Spark's round(x, 6). NaN,
    infinities and values of 1e15 and more stay as they are: there a double's step is 0.125 or more, so rounding
    to 6 decimals changes nothing (and Decimal would need more than its 28 digits)."""
    if not isinstance(value, float) or not math.isfinite(value) or abs(value) >= DUP_FLOAT_LIMIT:
        return value
    return float(Decimal(repr(value)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP))


# --- Spark side -----------------------------------------------------------------------------------------------


def _spark_hash(namespace: str, seed: int, cols: list):
    """The chained xxhash64 (module doc) of typed columns: see _spark_value for the types it accepts."""
    from pyspark.sql import functions as F

    masks = [
        reduce(
            operator.add,
            [F.isnull(col).cast("int") * F.lit(1 << i) for i, col in enumerate(cols[start : start + MASK_BITS])],
        )  # fmt: skip
        for start in range(0, len(cols), MASK_BITS)
    ]
    return F.xxhash64(F.lit(f"{namespace}{SEPARATOR}{seed}"), *cols, *masks)


def _spark_value(df, column: str):
    """A sparse column as hashed: strings as they are, integers and booleans widened to bigint (as Python ints)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    col = F.col(column)
    return col if isinstance(df.schema[column].dataType, StringType) else col.cast("bigint")


def validate_columns(df, spec: HashingSpec, table: str = "samples") -> None:
    """Every column the spec reads exists, and sparse columns are strings/integers (not floats)."""
    from pyspark.sql.types import BooleanType, DoubleType, FloatType, IntegerType, LongType, ShortType, StringType

    schema = {f.name: f.dataType for f in df.schema.fields}
    needed = [spec.user_column, "impression_id", *LABEL_COLUMNS, "ds"]
    for column in [*needed, *spec.raw_columns]:
        if column not in schema:
            raise HashingSpecError(f"{spec.source}: column '{column}' is not in table '{table}' (columns: {sorted(schema)})")  # fmt: skip
    hashable = (StringType, IntegerType, LongType, ShortType, BooleanType)
    for sparse in spec.fields:
        for column in sparse.columns:
            if not isinstance(schema[column], hashable):
                raise HashingSpecError(f"{spec.source}: field '{sparse.name}' column '{column}' has type {schema[column].simpleString()}; only strings and integers can be hashed (use a dense feature)")  # fmt: skip
    for feature in spec.dense:
        if not isinstance(schema[feature.column], (DoubleType, FloatType, IntegerType, LongType, ShortType)):
            raise HashingSpecError(f"{spec.source}: dense '{feature.name}' column '{feature.column}' has type {schema[feature.column].simpleString()}; expected a number")  # fmt: skip


def hash_features(samples_df, spec: HashingSpec):
    """samples -> features table (schemas/features.yaml): ids per field, dense values, keys, labels, ds."""
    from pyspark.sql import functions as F

    check_leakage(spec)
    validate_columns(samples_df, spec)
    sparse_cols = [
        F.pmod(_spark_hash(s.name, spec.seed, [_spark_value(samples_df, c) for c in s.columns]), F.lit(s.buckets))
        .cast("long")
        .alias(f"f_{s.name}")  # fmt: skip
        for s in spec.fields
    ]
    dense_cols = [_spark_dense(d).alias(f"x_{d.name}") for d in spec.dense]
    dup_parts = [_dup_expr(samples_df, c) for c in spec.raw_columns]
    return samples_df.select(
        F.col("impression_id").cast("string"),
        _spark_hash("__user__", spec.seed, [_spark_value(samples_df, spec.user_column)]).alias("user_key"),
        _spark_hash("__dup__", spec.seed, dup_parts).alias("dup_key"),
        *sparse_cols,
        *dense_cols,
        *(F.col(c).cast("int").alias(c) for c in LABEL_COLUMNS),
        F.col("ds").cast("string"),
    )


def _spark_dense(feature: DenseFeature):
    from pyspark.sql import functions as F

    raw = F.col(feature.column).cast("double")
    x = F.when(raw.isNull() | F.isnan(raw), F.lit(feature.fill)).otherwise(raw)
    if feature.transform == "log1p":
        x = F.log1p(F.greatest(x, F.lit(0.0)))
    return x.cast("float")


def _dup_expr(df, column: str):
    """dup_key part for one raw column: floats rounded to 6 decimals (as _dup_value), the rest as sparse values."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    if not isinstance(df.schema[column].dataType, (DoubleType, FloatType)):
        return _spark_value(df, column)
    return F.round(F.col(column).cast("double"), 6) + F.lit(0.0)  # + 0.0: -0.0 becomes 0.0 (Python twin does too)

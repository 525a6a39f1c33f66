"""Table contracts from schemas/<name>.yaml: Spark and Arrow schemas, type enforcement, row validation."""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"

# Declared type name -> (Spark SQL type name, pyarrow factory). Timestamps are UTC instants (Spark TimestampType).
TYPE_NAMES = ("string", "timestamp", "date", "double", "float", "long", "int", "boolean")
NUMERIC = {"double", "float", "long", "int"}


class SchemaError(ValueError):
    """Data does not match a table contract; the message names the table, the column and the problem."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    allowed: tuple | None = None
    doc: str = ""
    dictionary: bool = True  # false: values (nearly) all distinct, so Parquet skips the dictionary it would drop


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ("ds",)
    primary_key: tuple[str, ...] = ()
    dynamic_columns: tuple[tuple[str, str], ...] = ()  # (glob pattern, type), e.g. ("f_*", "long")
    description: str = ""
    source: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def plain_columns(self) -> tuple[str, ...]:
        """Columns declared `dictionary: false` (written without Parquet dictionary encoding)."""
        return tuple(c.name for c in self.columns if not c.dictionary)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise SchemaError(f"table '{self.name}': no column '{name}' in {self.source}")

    def dynamic_type(self, name: str) -> str | None:
        for pattern, type_name in self.dynamic_columns:
            if fnmatch.fnmatchcase(name, pattern):
                return type_name
        return None


def _parse_column(raw: Any, where: str) -> Column:
    if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
        raise SchemaError(f"{where}: each column needs 'name' and 'type', got {raw!r}")
    if raw["type"] not in TYPE_NAMES:
        raise SchemaError(f"{where}: column '{raw['name']}' has type {raw['type']!r}, expected one of {TYPE_NAMES}")
    allowed = raw.get("allowed")
    return Column(
        name=raw["name"],
        type=raw["type"],
        nullable=bool(raw.get("nullable", True)),
        allowed=tuple(allowed) if allowed is not None else None,
        doc=raw.get("doc", ""),
        dictionary=bool(raw.get("dictionary", True)),
    )


def _parse_dynamic(entry: str, where: str) -> tuple[str, str]:
    pattern, _, type_name = (part.strip() for part in entry.partition(":"))
    if type_name not in TYPE_NAMES:
        raise SchemaError(f"{where}: dynamic column {entry!r} needs 'pattern: type' with a type in {TYPE_NAMES}")
    return pattern, type_name


@functools.lru_cache(maxsize=64)
def load_schema(name: str, schema_dir: str | None = None) -> TableSchema:
    """Read schemas/<name>.yaml (or <schema_dir>/<name>.yaml)."""
    path = Path(schema_dir or SCHEMA_DIR) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SchemaError(f"table '{name}': no schema file {path} (known tables: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    columns = tuple(_parse_column(c, where) for c in data.get("columns") or [])
    if not columns:
        raise SchemaError(f"{where}: no columns declared")
    return TableSchema(
        name=data.get("name", name),
        columns=columns,
        partition_by=tuple(data.get("partition_by") or ()),
        primary_key=tuple(data.get("primary_key") or ()),
        dynamic_columns=tuple(_parse_dynamic(e, where) for e in data.get("dynamic_columns") or []),
        description=data.get("description", ""),
        source=where,
    )


def spark_type(type_name: str):
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "timestamp": T.TimestampType(),
        "date": T.DateType(),
        "double": T.DoubleType(),
        "float": T.FloatType(),
        "long": T.LongType(),
        "int": T.IntegerType(),
        "boolean": T.BooleanType(),
    }[type_name]


def arrow_type(type_name: str):
    import pyarrow as pa

    return {
        "string": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
        "double": pa.float64(),
        "float": pa.float32(),
        "long": pa.int64(),
        "int": pa.int32(),
        "boolean": pa.bool_(),
    }[type_name]


def spark_schema(name: str):
    """The declared columns as a Spark StructType (dynamic columns are not included)."""
    from pyspark.sql import types as T

    schema = load_schema(name)
    return T.StructType([T.StructField(c.name, spark_type(c.type), c.nullable) for c in schema.columns])


def arrow_schema(name: str):
    """The declared columns as a pyarrow schema (dynamic columns are not included)."""
    import pyarrow as pa

    schema = load_schema(name)
    return pa.schema([pa.field(c.name, arrow_type(c.type), c.nullable) for c in schema.columns])


def _type_name_of(data_type) -> str:
    from pyspark.sql import types as T

    mapping = {
        T.StringType: "string",
        T.TimestampType: "timestamp",
        T.TimestampNTZType: "timestamp",
        T.DateType: "date",
        T.DoubleType: "double",
        T.FloatType: "float",
        T.LongType: "long",
        T.IntegerType: "int",
        T.ShortType: "int",
        T.ByteType: "int",
        T.BooleanType: "boolean",
        T.DecimalType: "double",
    }
    for cls, name in mapping.items():
        if isinstance(data_type, cls):
            return name
    return data_type.simpleString()


def _castable(source: str, target: str) -> bool:
    """Casts that make sense for a table contract (value-dependent ones are checked on the data)."""
    if source == target or target == "string":
        return True
    if source == "string":
        return True  # parse; values are checked in _check_parse_casts
    if source in NUMERIC | {"boolean"} and target in NUMERIC:
        return True
    if source == "date" and target == "timestamp":
        return True
    return source == "timestamp" and target == "date"


def enforce(df, name: str, *, extra: str = "error", allow_missing_nullable: bool = False, check_values: bool = True):
    """Cast `df` to the contract of table `name`, columns in declared order (dynamic columns after, in df order).

    Raises SchemaError naming the table and column when a declared column is missing, has a type that cannot be
    cast, or (check_values) holds strings that do not parse as the declared type. `extra`: 'error' refuses
    undeclared columns, 'drop' removes them. `allow_missing_nullable` adds missing nullable columns as nulls.
    """
    from pyspark.sql import functions as F

    if extra not in ("error", "drop"):
        raise ValueError(f"enforce: extra must be 'error' or 'drop', got {extra!r}")
    schema = load_schema(name)
    present = {f.name: _type_name_of(f.dataType) for f in df.schema.fields}
    selected, parse_checks = [], []
    for col in schema.columns:
        if col.name not in present:
            if allow_missing_nullable and col.nullable:
                selected.append(F.lit(None).cast(spark_type(col.type)).alias(col.name))
                continue
            raise SchemaError(
                f"table '{name}': required column '{col.name}' ({col.type}) is missing; "
                f"columns present: {', '.join(present) or '(none)'}"
            )
        selected.append(_cast_column(name, col.name, present[col.name], col.type, parse_checks))
    undeclared = []
    for column_name, type_name in present.items():
        if column_name in schema.names:
            continue
        dynamic = schema.dynamic_type(column_name)
        if dynamic is not None:
            selected.append(_cast_column(name, column_name, type_name, dynamic, parse_checks))
        else:
            undeclared.append(column_name)
    if undeclared and extra == "error":
        raise SchemaError(
            f"table '{name}': undeclared column(s) {', '.join(undeclared)} (declared: {', '.join(schema.names)}"
            + (f"; dynamic: {', '.join(p for p, _ in schema.dynamic_columns)}" if schema.dynamic_columns else "")
            + ")"
        )
    if check_values and parse_checks:
        _check_parse_casts(df, name, parse_checks)
    return df.select(*selected)


def _cast_column(table: str, column: str, source: str, target: str, parse_checks: list):
    from pyspark.sql import functions as F

    if not _castable(source, target):
        raise SchemaError(f"table '{table}': column '{column}' has type {source}, which cannot be cast to {target}")
    if source == target:
        return F.col(column)
    if source == "string" and target != "string":
        parse_checks.append((column, target))
        return F.expr(f"try_cast(`{column}` AS {spark_type(target).simpleString()})").alias(column)
    return F.col(column).cast(spark_type(target)).alias(column)


def _check_parse_casts(df, table: str, checks: list[tuple[str, str]]) -> None:
    """One pass over df: for each string column parsed to another type, count values that do not parse."""
    from pyspark.sql import functions as F

    aggs = []
    for column, target in checks:
        failed = (
            F.col(column).isNotNull() & F.expr(f"try_cast(`{column}` AS {spark_type(target).simpleString()})").isNull()
        )
        aggs.append(F.sum(failed.cast("long")).alias(f"n_{column}"))
        aggs.append(F.min(F.when(failed, F.col(column))).alias(f"ex_{column}"))
    row = df.agg(*aggs).collect()[0]
    for column, target in checks:
        if row[f"n_{column}"]:
            raise SchemaError(
                f"table '{table}': column '{column}' has {row[f'n_{column}']} value(s) that are not a valid "
                f"{target}, e.g. {row[f'ex_{column}']!r}"
            )


def reason_column(name: str, columns: list[str] | None = None):
    """A Spark Column giving the first contract violation of a row ('null:<col>' or 'not_allowed:<col>'), else null."""
    from pyspark.sql import functions as F

    schema = load_schema(name)
    checks = []
    for col in schema.columns:
        if columns is not None and col.name not in columns:
            continue
        if not col.nullable:
            checks.append(F.when(F.col(col.name).isNull(), F.lit(f"null:{col.name}")))
        if col.allowed is not None:
            allowed = [F.lit(v) for v in col.allowed]
            bad = F.col(col.name).isNotNull() & ~F.col(col.name).isin(*allowed)
            checks.append(F.when(bad, F.lit(f"not_allowed:{col.name}")))
    return F.coalesce(*checks) if checks else F.lit(None).cast("string")


def validate_rows(df, name: str, reason_col: str = "reason"):
    """Split df into (good, bad): bad rows break a non-null or `allowed` rule and carry a `reason_col` string.

    Only declared columns that df has are checked. Cache df first if you consume both halves.
    """
    from pyspark.sql import functions as F

    reason = reason_column(name, columns=df.columns)
    tagged = df.withColumn(reason_col, reason)
    good = tagged.filter(F.col(reason_col).isNull()).drop(reason_col)
    bad = tagged.filter(F.col(reason_col).isNotNull())
    return good, bad


def to_quarantine(bad_df, source: str, job: str, reason_col: str = "reason", ds=None):
    """Shape rows refused by a job as the quarantine table: source, reason, record (row as JSON), job, ds.

    `ds`: a string for all rows, or None to take each row's own `ds` column.
    """
    from pyspark.sql import functions as F

    record_cols = [c for c in bad_df.columns if c != reason_col]
    ds_col = F.lit(ds) if ds is not None else F.col("ds").cast("string")
    return bad_df.select(
        F.lit(source).alias("source"),
        F.col(reason_col).cast("string").alias("reason"),
        F.to_json(F.struct(*[F.col(c) for c in record_cols])).alias("record"),
        F.lit(job).alias("job"),
        ds_col.alias("ds"),
    )

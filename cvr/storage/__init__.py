"""Table storage: schemas (contracts from schemas/*.yaml) and ds-partitioned Parquet / Delta tables."""

from cvr.storage.schema import (
    SchemaError,
    arrow_schema,
    enforce,
    load_schema,
    spark_schema,
    to_quarantine,
    validate_rows,
)
from cvr.storage.tables import (
    count_rows,
    delete_partitions,
    list_partitions,
    read_table,
    sql_conf,
    table_exists,
    table_files,
    table_format,
    table_path,
    table_snapshot,
    table_version,
    write_json_atomic,
    write_partitions,
)

__all__ = [
    "SchemaError",
    "arrow_schema",
    "count_rows",
    "delete_partitions",
    "enforce",
    "list_partitions",
    "load_schema",
    "read_table",
    "spark_schema",
    "sql_conf",
    "table_exists",
    "table_files",
    "table_format",
    "table_path",
    "table_snapshot",
    "table_version",
    "to_quarantine",
    "validate_rows",
    "write_json_atomic",
    "write_partitions",
]

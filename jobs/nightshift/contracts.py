"""The feature contract of a model: which columns it reads, their types and nullability."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

from nightshift.errors import ContractError

#: The ONNX output holding [P(0), P(1)] per row: what training exports and scoring reads.
PROBABILITIES = "probabilities"


class ColumnType(StrEnum):
    """Logical column types a contract can declare.

    Numeric types (float32/float64, int8…int64, bool) reach a model as numbers: a value is cast
    to the model's input type exactly or refused (an integer float32 cannot hold, a fraction for an
    integer input), never rounded to something else or turned into NaN. `bool` feeds 0/1.
    `string` and `category` (dictionary-encoded strings, as Parquet stores low-cardinality text)
    are categorical: they reach a model as strings (a null becomes "__missing__") or, for models
    that take category codes, as the code of the value in the model's category list.

    Nullability: a null in a column declared `nullable = false` is refused naming the column. A
    null in a nullable column reaches the model as NaN (float inputs) or "__missing__" (string
    inputs); a model input of an integer or bool element type has no missing value, so a null
    for it is refused even when the column is nullable.
    """

    float64 = "float64"
    float32 = "float32"
    int64 = "int64"
    int32 = "int32"
    int16 = "int16"
    int8 = "int8"
    boolean = "bool"
    string = "string"
    category = "category"

    @property
    def is_categorical(self) -> bool:
        return self in (ColumnType.string, ColumnType.category)

    @property
    def is_integer(self) -> bool:
        return self in _INTEGER_BITS

    @property
    def is_float(self) -> bool:
        return self in (ColumnType.float32, ColumnType.float64)

    @property
    def is_numeric(self) -> bool:
        """Fed to a model as a number: floats, integers and bool (0/1)."""
        return not self.is_categorical

    @property
    def integer_range(self) -> tuple[int, int] | None:
        """(min, max) an integer type can hold; None for other types."""
        bits = _INTEGER_BITS.get(self)
        return None if bits is None else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


_INTEGER_BITS: dict[ColumnType, int] = {
    ColumnType.int8: 8,
    ColumnType.int16: 16,
    ColumnType.int32: 32,
    ColumnType.int64: 64,
}


_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class Column(BaseModel):
    """One feature column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN)
    type: ColumnType
    nullable: bool = True
    # Monitoring hints (used by data-quality checks); never enforced at scoring time.
    min: float | None = None
    max: float | None = None


class FeatureContract(BaseModel):
    """What a model reads from a partition. Checked before any inference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity_id: str = Field(default="entity_id", pattern=_NAME_PATTERN)
    entity_id_type: Literal["int64", "string"] = "int64"
    columns: tuple[Column, ...] = Field(min_length=1)
    # What to do with columns present in the data but not in the contract.
    extra_columns: Literal["ignore", "error"] = "ignore"
    # Duplicate entity ids within one partition are always an error: scoring an
    # entity twice in one night is an upstream bug, and picking one silently hides it.

    @field_validator("columns")
    @classmethod
    def _unique_names(cls, columns: tuple[Column, ...]) -> tuple[Column, ...]:
        seen: set[str] = set()
        for col in columns:
            if col.name in seen:
                raise ValueError(f"column {col.name!r} is declared twice")
            seen.add(col.name)
        return columns

    @model_validator(mode="after")
    def _entity_not_a_feature(self) -> FeatureContract:
        if any(c.name == self.entity_id for c in self.columns):
            raise ValueError(f"entity id column {self.entity_id!r} must not also be a feature column")
        return self

    @property
    def numeric(self) -> list[Column]:
        return [c for c in self.columns if not c.type.is_categorical]

    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.type.is_categorical]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def read_columns(self) -> list[str]:
        return [self.entity_id, *self.feature_names]

    def check_schema(self, schema: pa.Schema, source: str) -> None:
        """Raise ContractError naming `source` and the column if `schema` breaks the contract."""
        problems = schema_problems(self, schema)
        if problems:
            raise ContractError(f"{source}: " + "; ".join(problems))


def _compatible(declared: ColumnType | str, actual: pa.DataType) -> bool:
    import pyarrow as pa

    t = actual
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        # Arrow's null type: a column that is entirely null. Acceptable for a nullable
        # numeric or string column (it scores as missing); checked for nullability apart.
        return True
    declared = str(declared)
    if declared in ("float64", "float32"):
        return bool(pa.types.is_floating(t) or pa.types.is_integer(t))
    if declared in ("int64", "int32", "int16", "int8"):
        # Any integer type: values outside the declared range are refused when read.
        return bool(pa.types.is_integer(t))
    if declared == "bool":
        return bool(pa.types.is_boolean(t))
    if declared in ("string", "category"):
        # `category` is text too: dictionary-encoded in the file, or plain strings.
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
    return False


def schema_problems(contract: FeatureContract, schema: pa.Schema) -> list[str]:
    """Every way `schema` breaks `contract`, as readable sentences naming the column."""
    import pyarrow as pa

    problems: list[str] = []
    names = set(schema.names)
    if contract.entity_id not in names:
        problems.append(f"missing entity id column {contract.entity_id!r}")
    else:
        t = schema.field(contract.entity_id).type
        ok = (
            pa.types.is_integer(t)
            if contract.entity_id_type == "int64"
            else (pa.types.is_string(t) or pa.types.is_large_string(t))
        )
        if not ok:
            problems.append(f"entity id column {contract.entity_id!r} has type {t}, expected {contract.entity_id_type}")
    for col in contract.columns:
        if col.name not in names:
            problems.append(f"missing column {col.name!r} (expected {col.type.value})")
            continue
        actual = schema.field(col.name).type
        if not _compatible(col.type, actual):
            problems.append(f"column {col.name!r} has type {actual}, expected {col.type.value}")
        elif pa.types.is_null(actual) and not col.nullable:
            problems.append(f"column {col.name!r} is entirely null but the contract says not nullable")
    if contract.extra_columns == "error":
        declared = set(contract.read_columns)
        extra = sorted(n for n in names if n not in declared and n != "ds")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(repr, extra))} (contract: extra_columns = 'error')")
    return problems

"""The one rule for values nightshift stores as JSON (registry, audit trail, candidates, monitoring, nights).

JSON has no NaN or infinity, and PostgreSQL's json type refuses them, so a metric that is
undefined (the ROC AUC of a day with one class) is stored as null, never as a token one
database accepts and the other rejects. Standard library only: every layer may import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types, the same on SQLite and PostgreSQL.

    - NaN, inf and -inf become None (null);
    - numpy scalars become Python numbers (bool, int, float), numpy arrays lists;
    - dates, datetimes and times become ISO strings;
    - mappings become dicts with str keys; lists, tuples and sets become lists;
    - None, bool, int, float and str stay as they are; anything else becomes its str.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or numpy-backed int subclass: a plain int
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if _is_numpy(value):
        # numpy scalars and arrays, without importing numpy: .tolist() gives Python numbers.
        return json_safe(value.tolist())
    return str(value)


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "tolist")

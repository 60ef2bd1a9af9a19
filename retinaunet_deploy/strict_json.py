"""Strict JSON: the one place the toolkit turns data into JSON text.

Every JSON file and metadata string the toolkit writes is strict JSON (RFC 8259): no
NaN or Infinity, which Python's json writes by default but strict parsers (Node's
JSON.parse, Go, Rust's serde_json, jq) refuse. A figure that can be undefined (AP on
images without objects, a ratio with a zero denominator, an interval over an empty
set) is written as null with a reason beside it under "<key>_reason" (`null_figure`).
"""

from __future__ import annotations

import json
import math

REASON_SUFFIX = "_reason"


def dumps_json(data, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """`data` as strict JSON text (the one place the toolkit turns data into JSON).

    Raises `ValueError` naming where a NaN or Infinity sits (e.g. ``['variants']
    ['model.int8.onnx']['agreement']``): such a figure must be written as None with
    a reason (`null_figure`), never as a bare NaN.
    """
    try:
        return json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False)
    except ValueError as error:
        where = _nonfinite_at(data)
        if where is None:
            raise
        raise ValueError(f"refusing to write {where[1]!r} at {where[0] or 'the top level'} as "
                         f"JSON: strict JSON has no NaN or Infinity (write None with a reason, "
                         f"strict_json.null_figure)") from error


def _nonfinite_at(data, where: str = "") -> tuple[str, float] | None:
    """(path, value) of the first NaN/Infinity inside `data`, or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (where, data)
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = _nonfinite_at(value, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def loads_strict(text: str):
    """Parse strict JSON: NaN, Infinity and -Infinity are refused (`ValueError`), as a
    strict parser in another language would refuse them."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


def null_figure(record: dict, key: str, value, reason: str) -> None:
    """Set ``record[key]`` to `value` when it is a finite number; otherwise to None with
    ``record[key + "_reason"] = reason`` (why the figure is undefined)."""
    if value is not None and math.isfinite(float(value)):
        record[key] = float(value) if not isinstance(value, int) else value
        record.pop(key + REASON_SUFFIX, None)
    else:
        record[key] = None
        record[key + REASON_SUFFIX] = reason


def undefined_as_null(record: dict, reason: str) -> dict:
    """`record` (nested dicts and lists, changed in place and returned) with every NaN or
    Infinity number replaced by None; a replaced value under a dict key gets
    ``<key>_reason`` = `reason` beside it (a list element, its list's key does)."""
    for key, value in list(record.items()):
        if isinstance(value, dict):
            undefined_as_null(value, reason)
        elif isinstance(value, (list, tuple)) and _nonfinite_at(value) is not None:
            record[key] = _nulled(value, reason)
            record.setdefault(f"{key}{REASON_SUFFIX}", reason)
        elif isinstance(value, float) and not math.isfinite(value):
            record[key] = None
            record.setdefault(f"{key}{REASON_SUFFIX}", reason)
    return record


def _nulled(values, reason: str) -> list:
    out = []
    for value in values:
        if isinstance(value, dict):
            out.append(undefined_as_null(value, reason))
        elif isinstance(value, (list, tuple)):
            out.append(_nulled(value, reason))
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(None)
        else:
            out.append(value)
    return out

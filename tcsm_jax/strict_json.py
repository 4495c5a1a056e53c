"""Strict JSON (RFC 8259) for every JSON file the project writes.

``json.dumps`` writes ``NaN`` / ``Infinity`` for non-finite floats by default, which
is not JSON: strict parsers (``jq``, JavaScript, Go, most databases) refuse the whole
file. ``dumps`` writes a non-finite float (Python or numpy) as ``null`` and passes
``allow_nan=False`` as a guard; ``nan_for_null`` turns a metrics row read back into
floats again (a ``null`` metric was a NaN or an infinity).
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict

import numpy as np


def finite_or_null(obj: Any) -> Any:
  """``obj`` with every non-finite float (in dicts, lists, tuples) replaced by ``None``;
  numpy scalars become Python numbers."""
  if isinstance(obj, dict):
    return {k: finite_or_null(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_null(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(float(obj)) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def dumps(obj: Any, **kwargs) -> str:
  """``json.dumps`` of ``finite_or_null(obj)``, strict (``allow_nan=False``)."""
  return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


def nan_for_null(row: Dict[str, Any]) -> Dict[str, Any]:
  """A metrics row with ``None`` values read back as ``float('nan')``."""
  return {k: float("nan") if v is None else v for k, v in row.items()}

"""Stage outputs as Ray Data numpy batches."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def numpy_batch(cols: Mapping[str, list[Any]], dtypes: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Columns of Python values -> a numpy batch: ``dtypes`` for the typed columns, object arrays
    for the rest (bytes, strings and None stay as they are; ``np.asarray`` would turn a column of
    equal-length bytes into a fixed-width array or of lists into a 2-D one)."""
    dtypes = dtypes or {}
    out: dict[str, np.ndarray] = {}
    for name, values in cols.items():
        if name in dtypes:
            out[name] = np.asarray(values, dtype=dtypes[name])
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[name] = arr
    return out

"""The two statistics the benchmark's figures are made of: a nearest-rank percentile of
samples, and the median across rounds (leaving out rounds that measured nothing)."""

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    """The median of the values that are not NaN; NaN when none is."""
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan

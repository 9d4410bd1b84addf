"""Comparing categories with the truth: the challenge's PASS/FAIL, and why."""

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Validation:
    """Categories against truth.

    ``passed`` is the challenge's criterion: the two sets are equal.
    ``missing`` are truth rows the run did not report, ``extra`` rows it
    reported that the truth lacks (1-based, at most ``limit`` of each kept).
    """

    passed: bool
    n_categories: int
    n_truth: int
    n_missing: int
    n_extra: int
    missing: list
    extra: list
    precision: float
    recall: float
    f1: float

    def to_dict(self):
        return asdict(self)

    def summary(self):
        """One line: ``PASS (19 categories)`` or ``FAIL: 2 missing (e.g. 5, 9), ...``."""
        if self.passed:
            return f"PASS ({self.n_categories} categories)"
        parts = []
        if self.n_missing:
            parts.append(f"{self.n_missing} missing (e.g. {', '.join(map(str, self.missing[:5]))})")
        if self.n_extra:
            parts.append(f"{self.n_extra} extra (e.g. {', '.join(map(str, self.extra[:5]))})")
        return (f"FAIL: {'; '.join(parts)}; {self.n_categories} categories vs {self.n_truth} "
                f"in the truth; precision {self.precision:.4f}, recall {self.recall:.4f}")


def validate(categories, truth, limit=100):
    """Compare 1-based ``categories`` with ``truth``.

    Examples
    --------
    >>> validate([1, 3], [1, 3]).passed
    True
    >>> v = validate([1, 2], [1, 3]); (v.missing, v.extra, v.precision)
    ([3], [2], 0.5)
    """
    categories = np.unique(np.asarray(categories, dtype=np.int64))
    truth = np.unique(np.asarray(truth, dtype=np.int64))
    missing = np.setdiff1d(truth, categories)
    extra = np.setdiff1d(categories, truth)
    hits = categories.size - extra.size
    # An empty set is perfectly precise/recalled against an empty truth.
    precision = hits / categories.size if categories.size else float(truth.size == 0)
    recall = hits / truth.size if truth.size else float(categories.size == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Validation(
        passed=bool(missing.size == 0 and extra.size == 0),
        n_categories=int(categories.size), n_truth=int(truth.size),
        n_missing=int(missing.size), n_extra=int(extra.size),
        missing=missing[:limit].tolist(), extra=extra[:limit].tolist(),
        precision=float(precision), recall=float(recall), f1=float(f1))

"""The sample-ratio-mismatch (SRM) check: were the variants served in the configured ratio?

A skewed assignment (a bucketing bug, a variant that crashes before it is counted, bots
that only one variant lets through) is the most common way an experiment goes wrong, and
it invalidates every comparison: the arms no longer hold comparable users. The check is
Pearson's goodness-of-fit (``scipy.stats.chisquare``) of requests per variant against the
weights, failing at a strict p < 0.001.

The unit is the request, not the user: users who send many requests make per-variant
request counts noisier than the multinomial the test assumes, which is one more reason the
threshold is strict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

from flagwire._errors import ConfigError

__all__ = ["SrmCheck", "srm_check"]


@dataclass(frozen=True, slots=True)
class SrmCheck:
    """The sample-ratio-mismatch check: were variants served in the configured ratio?

    Attributes:
        observed: Requests per variant.
        expected: Requests per variant the weights predict for the same total.
        statistic: Pearson's chi-square (``inf`` when a zero-weight variant was served).
        p_value: Its p-value.
        threshold: The p-value below which the check fails.
        message: What it found, in a sentence.
    """

    observed: Mapping[str, float]
    expected: Mapping[str, float]
    statistic: float
    p_value: float
    threshold: float
    message: str

    @property
    def mismatch(self) -> bool:
        """Whether the assignment is skewed (``p_value < threshold``)."""
        return self.p_value < self.threshold


def srm_check(
    observed: Mapping[str, float],
    weights: Mapping[str, float],
    *,
    threshold: float = 0.001,
) -> SrmCheck:
    """Test the requests per variant against the weights they were assigned with.

    Args:
        observed: Requests per variant; variants missing count as 0.
        weights: The assignment weights per variant (any scale: ``{"on": 1, "off": 1}``,
            or flagd's fractional percentages). A served variant missing here has weight 0.
        threshold: Fail below this p-value. Strict (0.001) because the check runs on every
            report and a skew this unlikely is a bug, not bad luck.

    Returns:
        The check.

    Raises:
        ConfigError: A weight is negative or not finite, or all weights are 0.
    """
    bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w >= 0)}
    total_weight = sum(weights.values())
    if bad or not total_weight > 0:
        msg = f"weights must be finite, non-negative and not all 0, got {dict(weights)!r}"
        raise ConfigError(msg)
    names = list(weights) + sorted(set(observed) - set(weights))
    counts = {name: float(observed.get(name, 0.0)) for name in names}
    total = sum(counts.values())
    expected = {name: total * weights.get(name, 0.0) / total_weight for name in names}
    stray = [name for name in names if expected[name] == 0 and counts[name] > 0]
    if stray:
        message = f"variant(s) {', '.join(stray)} were served but have weight 0"
        return SrmCheck(counts, expected, math.inf, 0.0, threshold, message)
    tested = [name for name in names if expected[name] > 0]
    if total == 0 or len(tested) < 2:
        message = "nothing to test: no requests" if total == 0 else "only one weighted variant"
        return SrmCheck(counts, expected, 0.0, 1.0, threshold, message)
    result = stats.chisquare([counts[n] for n in tested], [expected[n] for n in tested])
    statistic, p_value = float(result.statistic), float(result.pvalue)
    shares = ", ".join(
        f"{n} {counts[n] / total:.2%} (expected {expected[n] / total:.2%})" for n in tested
    )
    verdict = "MISMATCH" if p_value < threshold else "ok"
    message = f"{verdict}: chi2 = {statistic:.2f}, p = {p_value:.3g}; {shares}"
    return SrmCheck(counts, expected, statistic, p_value, threshold, message)

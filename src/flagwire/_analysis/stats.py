"""The statistics of an experiment report: a variant against the control, and the SRM check.

Three kinds of metric, each with the test a data scientist would reach for, and scipy's
implementation where scipy has one:

* a **proportion** (5xx rate; an event tracked at most once per request): Pearson's
  chi-square on the 2x2 table without continuity correction (``chi2_contingency``; the
  same as the pooled two-proportion z-test), Newcombe's hybrid score interval for the
  difference (built from Wilson intervals; good coverage near 0% and 100%, where Wald's
  fails), Katz's log interval for the ratio;
* a **Poisson rate** (an event that can happen more than once per request): the exact
  conditional test (given the total, the variant's count is binomial; ``binomtest``), a
  Wald interval for the difference, the log interval for the ratio;
* a **mean** (an event's value): Welch's t-test from the sums (``ttest_ind_from_stats``
  with ``equal_var=False``), its Welch-Satterthwaite interval for the difference, the
  delta-method log interval for the ratio.

With :class:`~flagwire._analysis.sequential.Sequential` every interval becomes the
normal-mixture confidence sequence around the same estimate and standard error, and the
p-value the always-valid one, so hourly looks keep the error rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special, stats

from flagwire._errors import ConfigError

from .sequential import Sequential

__all__ = [
    "Comparison",
    "Interval",
    "compare_means",
    "compare_poisson_rates",
    "compare_proportions",
    "rate_interval",
    "wilson_interval",
]


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval (or one element of a confidence sequence)."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside, bounds included."""
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against the control on one metric.

    Attributes:
        control: The control's estimate (a rate per request, or a mean value).
        variant: The variant's estimate.
        difference: ``variant - control``.
        difference_ci: The interval for the difference.
        relative: ``variant / control - 1``; None when the control's estimate is 0.
        relative_ci: The interval for ``relative``; None when either estimate is 0.
        p_value: Two-sided p-value of "no difference".
        test: The test behind ``p_value``.
        interval: The method behind the intervals.
    """

    control: float
    variant: float
    difference: float
    difference_ci: Interval
    relative: float | None
    relative_ci: Interval | None
    p_value: float
    test: str
    interval: str


def wilson_interval(successes: float, trials: float, alpha: float = 0.05) -> Interval:
    """Wilson's score interval for a proportion (scipy's ``proportion_ci(method="wilson")``).

    Args:
        successes: The count of successes, 0 to ``trials``.
        trials: The count of trials, positive.
        alpha: One minus the confidence level.

    Returns:
        The interval, within [0, 1].
    """
    z = _z_quantile(alpha)
    z2 = z * z
    centre = (successes + z2 / 2) / (trials + z2)
    half = z / (trials + z2) * math.sqrt(successes * (trials - successes) / trials + z2 / 4)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def compare_proportions(
    control_successes: float,
    control_trials: float,
    variant_successes: float,
    variant_trials: float,
    *,
    alpha: float = 0.05,
    sequential: Sequential | None = None,
) -> Comparison:
    """Compare two proportions (successes out of trials per arm).

    Args:
        control_successes: The control's successes.
        control_trials: The control's trials (requests); positive.
        variant_successes: The variant's successes.
        variant_trials: The variant's trials; positive.
        alpha: One minus the confidence level; also the level a sequence is tuned for.
        sequential: Use always-valid intervals and p-value with these settings.

    Returns:
        The comparison.
    """
    xc, nc, xt, nt = control_successes, control_trials, variant_successes, variant_trials
    pc, pt = xc / nc, xt / nt
    diff = pt - pc
    se = math.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    rel_var = (_relative_variance(1 - pc, xc), _relative_variance(1 - pt, xt))
    if sequential is not None:
        return _sequential(pc, pt, se, rel_var, _n_eff(nc, nt), alpha, sequential)
    wc, wt = wilson_interval(xc, nc, alpha), wilson_interval(xt, nt, alpha)
    difference_ci = Interval(
        diff - math.hypot(pt - wt.low, wc.high - pc),
        diff + math.hypot(wt.high - pt, pc - wc.low),
    )
    table = [[xt, nt - xt], [xc, nc - xc]]
    # A column of zeros (nobody, or everybody, converted in both arms) has no variation to
    # test and makes chi2_contingency refuse the table.
    no_variation = xt + xc == 0 or xt + xc == nt + nc
    p_value = 1.0 if no_variation else float(stats.chi2_contingency(table, correction=False)[1])
    relative, relative_ci = _log_ratio(pc, pt, rel_var, _z_quantile(alpha))
    return Comparison(
        pc, pt, diff, difference_ci, relative, relative_ci, p_value,
        test="pearson-chi2", interval="newcombe-wilson",
    )  # fmt: skip


def compare_poisson_rates(
    control_events: float,
    control_exposure: float,
    variant_events: float,
    variant_exposure: float,
    *,
    alpha: float = 0.05,
    sequential: Sequential | None = None,
) -> Comparison:
    """Compare two Poisson rates (events per request).

    Args:
        control_events: The control's event count.
        control_exposure: The control's requests; positive.
        variant_events: The variant's event count.
        variant_exposure: The variant's requests; positive.
        alpha: One minus the confidence level.
        sequential: Use always-valid intervals and p-value with these settings.

    Returns:
        The comparison.
    """
    xc, nc, xt, nt = control_events, control_exposure, variant_events, variant_exposure
    rc, rt = xc / nc, xt / nt
    diff = rt - rc
    se = math.sqrt(xc / nc**2 + xt / nt**2)
    rel_var = (_relative_variance(1.0, xc), _relative_variance(1.0, xt))
    if sequential is not None:
        return _sequential(rc, rt, se, rel_var, _n_eff(nc, nt), alpha, sequential)
    z = _z_quantile(alpha)
    # Counts from increase() are extrapolated, so not whole; the exact test needs integers.
    kc, kt = round(xc), round(xt)
    p_value = 1.0 if kc + kt == 0 else stats.binomtest(kt, kc + kt, nt / (nc + nt)).pvalue
    relative, relative_ci = _log_ratio(rc, rt, rel_var, z)
    return Comparison(
        rc, rt, diff, Interval(diff - z * se, diff + z * se), relative, relative_ci,
        float(p_value), test="poisson-conditional-exact", interval="wald",
    )  # fmt: skip


def compare_means(
    control: tuple[float, float, float],
    variant: tuple[float, float, float],
    *,
    alpha: float = 0.05,
    sequential: Sequential | None = None,
) -> Comparison | None:
    """Compare two means from their sufficient statistics (Welch).

    Args:
        control: The control's ``(count, sum, sum of squares)``.
        variant: The variant's ``(count, sum, sum of squares)``.
        alpha: One minus the confidence level.
        sequential: Use always-valid intervals and p-value with these settings.

    Returns:
        The comparison, or None when an arm has fewer than 2 values or both have no
        variance (there is no t-test then).
    """
    (nc, mc, vc), (nt, mt, vt) = _moments(*control), _moments(*variant)
    if nc < 2 or nt < 2 or vc + vt == 0:
        return None
    diff = mt - mc
    se2c, se2t = vc / nc, vt / nt
    se = math.sqrt(se2c + se2t)
    rel_var = (se2c / mc**2 if mc > 0 else math.nan, se2t / mt**2 if mt > 0 else math.nan)
    if sequential is not None:
        return _sequential(mc, mt, se, rel_var, _n_eff(nc, nt), alpha, sequential)
    # Counts from increase() are extrapolated, so not whole; scipy computes with floats
    # even though its stubs ask for integers.
    sdc, sdt = math.sqrt(vc), math.sqrt(vt)
    result = stats.ttest_ind_from_stats(mt, sdt, nt, mc, sdc, nc, equal_var=False)  # type: ignore[arg-type]  # fmt: skip
    df = (se2c + se2t) ** 2 / (se2c**2 / (nc - 1) + se2t**2 / (nt - 1))
    t = float(special.stdtrit(df, 1 - alpha / 2))
    relative, relative_ci = _log_ratio(mc, mt, rel_var, _z_quantile(alpha))
    return Comparison(
        mc, mt, diff, Interval(diff - t * se, diff + t * se), relative, relative_ci,
        float(result.pvalue), test="welch-t", interval="welch-t",
    )  # fmt: skip


def rate_interval(
    model: str,
    count: float,
    requests: float,
    *,
    alpha: float = 0.05,
    sequential: Sequential | None = None,
) -> Interval:
    """One variant's interval for a rate per request (what the chart's error bars show).

    Args:
        model: ``"proportion"`` (Wilson) or ``"poisson"`` (Garwood's exact interval).
        count: Events (or errors).
        requests: Requests; positive.
        alpha: One minus the confidence level.
        sequential: Use the confidence sequence around the rate instead.

    Returns:
        The interval for ``count / requests``.
    """
    rate = count / requests
    if sequential is not None:
        spread = rate * (1 - rate) if model == "proportion" else rate
        half = sequential.multiplier(requests, alpha) * math.sqrt(spread / requests)
        return Interval(max(0.0, rate - half), rate + half)
    if model == "proportion":
        return wilson_interval(count, requests, alpha)
    low = 0.0 if count == 0 else float(special.chdtri(2 * count, 1 - alpha / 2)) / 2
    high = float(special.chdtri(2 * count + 2, alpha / 2)) / 2
    return Interval(low / requests, high / requests)


def _sequential(
    control: float,
    variant: float,
    se: float,
    rel_var: tuple[float, float],
    n_eff: float,
    alpha: float,
    sequential: Sequential,
) -> Comparison:
    diff = variant - control
    k = sequential.multiplier(n_eff, alpha)
    z = diff / se if se > 0 else 0.0 if diff == 0 else math.copysign(math.inf, diff)
    relative, relative_ci = _log_ratio(control, variant, rel_var, k)
    return Comparison(
        control, variant, diff, Interval(diff - k * se, diff + k * se), relative, relative_ci,
        sequential.p_value(z, n_eff, alpha), test="always-valid-mixture",
        interval="normal-mixture-cs",
    )  # fmt: skip


def _log_ratio(
    control: float, variant: float, rel_var: tuple[float, float], k: float
) -> tuple[float | None, Interval | None]:
    """``variant/control - 1`` and its delta-method interval on the log scale.

    ``rel_var`` holds each estimate's variance divided by its square; the variance of
    ``log(variant/control)`` is their sum.
    """
    if control == 0:
        return None, None
    relative = variant / control - 1
    spread = math.sqrt(rel_var[0] + rel_var[1])
    if variant == 0 or not math.isfinite(spread):
        return relative, None
    log_ratio = math.log(variant / control)
    return relative, Interval(
        math.exp(log_ratio - k * spread) - 1, math.exp(log_ratio + k * spread) - 1
    )


def _relative_variance(spread: float, count: float) -> float:
    """Variance over the squared estimate for a count-based rate: ``spread / count``."""
    return spread / count if count > 0 else math.nan


def _moments(count: float, total: float, squares: float) -> tuple[float, float, float]:
    """``(n, mean, sample variance)`` from the count, sum and sum of squares."""
    if count < 1:
        return count, math.nan, math.nan
    mean = total / count
    if count < 2:
        return count, mean, math.nan
    # The textbook one-pass formula can go slightly negative by cancellation: clamp.
    variance = max(0.0, (squares - total * total / count) / (count - 1))
    return count, mean, variance


def _n_eff(control: float, variant: float) -> float:
    return 1 / (1 / control + 1 / variant)


def _z_quantile(alpha: float) -> float:
    if not 0 < alpha < 1:
        msg = f"alpha must be between 0 and 1, not {alpha!r}"
        raise ConfigError(msg)
    return float(special.ndtri(1 - alpha / 2))

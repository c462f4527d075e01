"""Always-valid inference: the normal-mixture confidence sequence and its p-value.

A fixed-horizon 95% interval is right once, at a sample size chosen in advance. Looking at
it every hour and stopping at the first "significant" look rejects far more often than 5%
under no effect (twenty looks take it past 20%). A *confidence sequence* is a sequence of
intervals that contains the truth at every sample size at once with probability 1 - alpha,
so it can be checked as often as anyone likes.

flagwire uses Robbins's normal mixture, as in Howard, Ramdas, McAuliffe and Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences" (Ann. Statist. 2021), and
the always-valid p-value of Johari, Koomen, Pekelis and Walsh, "Always valid inference"
(Oper. Res. 2022; Optimizely's Stats Engine). For an estimate with standard error ``se``
after an effective sample size ``n``, the mixture martingale against ``theta0`` is::

    M = sqrt(rho / (n + rho)) * exp(z**2 * n / (2 * (n + rho))),   z = (est - theta0) / se

and Ville's inequality gives P(M ever reaches 1/alpha) <= alpha. The interval is the set of
``theta0`` with ``M < 1/alpha``, ``est +- se * sqrt((1 + rho/n) * log((n + rho) / (rho *
alpha**2)))``; the p-value is ``min(1, 1/M)`` at ``theta0 = 0``. The standard error is a
plug-in estimate, which makes the guarantee asymptotic (Waudby-Smith et al., "Time-uniform
central limit theory and asymptotic confidence sequences", 2021) rather than exact.

``rho`` sets where the interval is tightest, not whether it is valid: :class:`Sequential`
picks it so the interval is narrowest at ``tuning_samples``, where it is about 1.55 times
as wide as the fixed-horizon interval at alpha = 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy.optimize import minimize_scalar

__all__ = ["Sequential"]


@dataclass(frozen=True, slots=True)
class Sequential:
    """The settings of the always-valid (sequential) intervals.

    Attributes:
        tuning_samples: The effective per-arm sample size (requests, or events for a mean
            value) at which the interval is narrowest. Any value keeps the guarantee; pick
            the size the experiment expects to reach. Must be positive.
    """

    tuning_samples: float = 10_000.0

    def __post_init__(self) -> None:
        if not self.tuning_samples > 0 or math.isinf(self.tuning_samples):
            msg = f"tuning_samples must be a positive number, not {self.tuning_samples!r}"
            raise ValueError(msg)

    def rho(self, alpha: float) -> float:
        """The mixture's prior precision, in samples, that is tightest at the tuning size."""
        return self.tuning_samples / _optimal_ratio(alpha)

    def multiplier(self, n_eff: float, alpha: float) -> float:
        """The half-width of the interval in standard errors at effective size ``n_eff``.

        Args:
            n_eff: The effective sample size, ``1 / (1/n_control + 1/n_variant)``.
            alpha: The error rate over the whole sequence of looks.

        Returns:
            The multiplier (``inf`` when ``n_eff`` is not positive: nothing is known yet).
        """
        if not n_eff > 0:
            return math.inf
        rho = self.rho(alpha)
        return math.sqrt((1 + rho / n_eff) * math.log((n_eff + rho) / (rho * alpha**2)))

    def p_value(self, z: float, n_eff: float, alpha: float) -> float:
        """The always-valid p-value of ``H0: effect = 0`` for a z statistic.

        Args:
            z: The estimate divided by its standard error.
            n_eff: The effective sample size.
            alpha: The error rate ``rho`` was tuned for (the p-value is valid at any level,
                ``rho`` only decides where it is most sensitive).

        Returns:
            ``min(1, 1/M)``: below ``alpha`` exactly when the interval excludes 0.
        """
        if not n_eff > 0 or math.isnan(z):
            return 1.0
        rho = self.rho(alpha)
        log_m = 0.5 * math.log(rho / (n_eff + rho)) + z * z * n_eff / (2 * (n_eff + rho))
        return 1.0 if log_m <= 0 else math.exp(-log_m)


@lru_cache(maxsize=32)
def _optimal_ratio(alpha: float) -> float:
    """``n / rho`` minimising the half-width at ``n``; depends on ``alpha`` only."""
    if not 0 < alpha < 1:
        msg = f"alpha must be between 0 and 1, not {alpha!r}"
        raise ValueError(msg)
    two_log = 2 * math.log(1 / alpha)

    # Half-width squared over se squared as a function of log(n / rho); smooth, one minimum.
    def width(log_ratio: float) -> float:
        ratio = math.exp(log_ratio)
        return (1 + 1 / ratio) * (two_log + math.log1p(ratio))

    result = minimize_scalar(width, bounds=(-5.0, 10.0), method="bounded")
    return math.exp(float(result.x))

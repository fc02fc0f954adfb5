"""Small statistics the hard-NAT stages plan with and the success-rate matrix reports with.

Pure functions, no dependencies: the planner quotes a success probability for every hard stage
(so a skip can say *how* hopeless it is), and every measured rate is reported with a Wilson
interval (DESIGN "Two test worlds": trials, Wilson 95% interval, p50/p95).
"""

from __future__ import annotations

import math
from typing import Final

#: Two-sided 95% normal quantile (Wilson's interval uses it as z).
Z95: Final = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Agresti & Coull 1998).

    Preferred over the normal ("Wald") interval because it stays inside [0, 1] and keeps its
    coverage near 0 and 1, where hard-NAT success rates live. ``trials == 0`` gives (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return (lo, hi)


def success_probability(n: int, m: int, size: int) -> float:
    """Birthday attack: P(at least one of ``m`` probes hits one of ``n`` open ports) ~ 1-e^(-nm/N).

    DESIGN "The waterfall": the hard NAT opened ``n`` pinholes at ports uniform in a range of
    ``size`` ports; the easy side probes ``m`` of them. The Poisson approximation of
    :func:`success_probability_exact`; what the design and the PRD quote.
    """
    if n < 0 or m < 0 or size < 1:
        raise ValueError(f"need n, m >= 0 and size >= 1, got n={n} m={m} size={size}")
    return -math.expm1(-n * m / size)


def success_probability_exact(n: int, m: int, size: int) -> float:
    """Same event with distinct probes and distinct pinhole ports (hypergeometric, exact).

    P(miss) = C(N-n, m) / C(N, m): every one of the ``m`` distinct probed ports avoids the ``n``
    open ones. Slightly above the Poisson form (probing without replacement never wastes a probe).
    """
    if n < 0 or m < 0 or size < 1:
        raise ValueError(f"need n, m >= 0 and size >= 1, got n={n} m={m} size={size}")
    if n + m > size:
        return 1.0 if n and m else 0.0
    log_miss = (
        math.lgamma(size - n + 1)
        - math.lgamma(size - n - m + 1)
        - math.lgamma(size + 1)
        + math.lgamma(size - m + 1)
    )
    return -math.expm1(log_miss)


def poisson_cdf(k: int, mean: float) -> float:
    """P(X <= k) for X ~ Poisson(mean): how likely background churn stays within k allocations."""
    if mean < 0:
        raise ValueError("mean must be >= 0")
    if k < 0:
        return 0.0
    if mean == 0:
        return 1.0
    term = math.exp(-mean)
    total = term
    for i in range(1, k + 1):
        term *= mean / i
        total += term
    return min(1.0, total)


def poisson_quantile(q: float, mean: float, cap: int = 10_000) -> int:
    """Smallest k with P(X <= k) >= q for X ~ Poisson(mean) (capped, for window sizing)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be in [0, 1]")
    k = 0
    while k < cap and poisson_cdf(k, mean) < q:
        k += 1
    return k

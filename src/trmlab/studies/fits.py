"""Scaling-law fits: acc = a - b * x^(-c) (scipy curve_fit), with parameter uncertainties, R^2 and a verdict.

A fit is only called meaningful when there are more points than parameters, x spans more than one value, acc
varies, the optimiser converges and the covariance is finite; otherwise the verdict says why, so a report never
presents a curve through noise as a law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

MIN_POINTS = 4  # 3 parameters: at least one degree of freedom left to judge the fit
C_BOUNDS = (1e-4, 10.0)  # the exponent's search range; a fit that ends on either edge found a step, not a law


@dataclass
class PowerLawFit:
    a: float = math.nan
    b: float = math.nan
    c: float = math.nan
    a_err: float = math.nan
    b_err: float = math.nan
    c_err: float = math.nan
    r2: float = math.nan
    n: int = 0
    meaningful: bool = False
    verdict: str = ""

    def predict(self, x):
        return self.a - self.b * np.asarray(x, dtype=float) ** (-self.c)

    def describe(self, y: str = "y") -> str:
        if not self.meaningful:
            return f"not meaningful: {self.verdict}"
        return (f"{y} = {self.a:.4g} ± {self.a_err:.2g} - {self.b:.4g} ± {self.b_err:.2g} · x^(-{self.c:.3g} ± "
                f"{self.c_err:.2g}),  R² = {self.r2:.3f}, n = {self.n}")


def power_law(x, a, b, c):
    return a - b * np.power(x, -c)


def fit_power_law(x, y) -> PowerLawFit:
    """Fit acc = a - b * x^(-c) to points (x > 0). Never raises: a failed fit comes back with its reason."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    out = PowerLawFit(n=len(x))
    if len(x) < MIN_POINTS:
        out.verdict = f"{len(x)} point(s); a 3-parameter fit needs at least {MIN_POINTS}"
        return out
    if len(np.unique(x)) < 3:
        out.verdict = "x takes fewer than 3 distinct values"
        return out
    if np.ptp(y) < 1e-9:
        out.verdict = f"the metric is the same ({y[0]:.4g}) at every x: nothing to fit"
        return out
    # Fit on x / x0 so the exponent is well conditioned; b is mapped back to the original x afterwards.
    x0 = float(np.min(x))
    xs = x / x0
    p0 = (float(np.max(y)) + 0.01, float(np.ptp(y)) + 1e-3, 0.5)
    try:
        (a, bs, c), pcov = curve_fit(power_law, xs, y, p0=p0, maxfev=20000,
                                     bounds=([-np.inf, -np.inf, C_BOUNDS[0]], [np.inf, np.inf, C_BOUNDS[1]]))
    except (RuntimeError, ValueError) as e:
        out.verdict = f"the fit did not converge ({str(e).splitlines()[0][:80]})"
        return out
    b = bs * x0 ** c
    # Delta method for b = bs * x0^c: d b/d bs = x0^c, d b/d c = b ln x0.
    J = np.array([x0 ** c, b * math.log(x0)])
    var_b = float(J @ pcov[1:, 1:] @ J) if np.all(np.isfinite(pcov)) else math.inf
    resid = y - power_law(xs, a, bs, c)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    out.a, out.b, out.c = float(a), float(b), float(c)
    out.a_err, out.c_err = (float(math.sqrt(v)) if np.isfinite(v) and v >= 0 else math.inf
                            for v in (pcov[0, 0], pcov[2, 2]))
    out.b_err = math.sqrt(var_b) if np.isfinite(var_b) and var_b >= 0 else math.inf
    out.r2 = 1 - float(np.sum(resid ** 2)) / ss_tot
    at_bound = min(abs(out.c - C_BOUNDS[0]), abs(out.c - C_BOUNDS[1])) < 1e-3 * out.c
    if not all(np.isfinite([out.a_err, out.b_err, out.c_err])):
        out.verdict = "parameters are not identifiable (infinite uncertainty)"
    elif at_bound:
        shape = "jumps between two levels" if out.c > 1 else "changes as a logarithm would"
        out.verdict = f"the exponent ends at its bound (c = {out.c:.3g}): the metric {shape}, not as a power law"
    elif out.c_err > out.c or out.b_err > abs(out.b) or out.a_err > abs(out.a):
        out.verdict = (f"a = {out.a:.3g} ± {out.a_err:.2g}, b = {out.b:.3g} ± {out.b_err:.2g}, c = {out.c:.3g} ± "
                       f"{out.c_err:.2g}: these points do not determine the curve")
    elif out.r2 < 0.5:
        out.verdict = f"poor fit (R² = {out.r2:.2f})"
    else:
        out.meaningful, out.verdict = True, "ok"
    return out

"""The single-season occupancy model of MacKenzie et al. (2002), with profile-likelihood intervals.

Sites (deployments) are occupied with probability psi; at an occupied site the species is detected in each
surveyed occasion with probability p; occasions a camera did not run are missing (NaN) and drop out. The
likelihood of site i with K_i surveyed occasions and d_i detections:

    detected (d_i > 0):  psi * p^d_i * (1 - p)^(K_i - d_i)
    never detected:      psi * (1 - p)^K_i + (1 - psi)

so it depends on the data only through the detected sites' totals and the count of undetected sites per K.
Estimates maximise it on the logit scale; each 95% interval is the set of values whose profile
log-likelihood (the other parameter maximised out) lies within chi2(1, 0.95) / 2 = 1.92 of the maximum,
which stays honest near 0 and 1, where Wald intervals fail (tests: coverage in 200 simulations).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

CHI2_95 = 3.841458820694124
_LIMIT = 15.0  # logits: psi and p within 3e-7 of 0 and 1


@dataclass(frozen=True)
class Occupancy:
    psi: float
    psi_low: float
    psi_high: float
    p: float  # detection probability per occasion at an occupied site
    p_low: float
    p_high: float
    sites: int  # with at least one surveyed occasion
    detected: int
    occasions: int  # surveyed site-occasions
    loglik: float


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class _Likelihood:
    def __init__(self, history: np.ndarray):
        h = np.asarray(history, np.float64)
        surveyed = ~np.isnan(h)
        k = surveyed.sum(axis=1)
        d = np.nansum(h, axis=1)
        keep = k > 0
        k, d = k[keep], d[keep]
        found = d > 0
        self.sites, self.detected, self.occasions = int(keep.sum()), int(found.sum()), int(k.sum())
        self.hits, self.misses = float(d[found].sum()), float((k[found] - d[found]).sum())
        self.undetected = Counter(int(x) for x in k[~found])  # K -> sites never detected

    def __call__(self, a: float, b: float) -> float:
        """Log-likelihood at logit(psi) = a, logit(p) = b."""
        log_psi, log_not_psi = -math.log1p(math.exp(-a)), -math.log1p(math.exp(a))
        log_p, log_q = -math.log1p(math.exp(-b)), -math.log1p(math.exp(b))
        ll = self.detected * log_psi + self.hits * log_p + self.misses * log_q
        for k, m in self.undetected.items():
            u, v = log_psi + k * log_q, log_not_psi
            ll += m * (max(u, v) + math.log1p(math.exp(-abs(u - v))))  # log(e^u + e^v)
        return ll


def _argmax(f, lo: float = -_LIMIT, hi: float = _LIMIT, tol: float = 1e-6) -> tuple[float, float]:
    """(x, f(x)) maximising a unimodal f on [lo, hi]: golden-section search (the profile likelihoods are concave
    in the logit; plain Python, as scipy's per-call overhead would cost more than the likelihood itself)."""
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tol:
        if fc >= fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = f(d)
    x = (lo + hi) / 2
    return x, f(x)


def fit(history) -> Occupancy | None:
    """The model fitted to a (sites, occasions) array of 1, 0 and NaN; None when no site was ever detected."""
    from scipy.optimize import brentq, minimize

    ll = _Likelihood(history)
    if ll.detected == 0 or ll.sites == 0:
        return None
    start = [math.log((ll.detected + 0.5) / (ll.sites - ll.detected + 0.5)),
             math.log((ll.hits + 0.5) / (ll.misses + 0.5))]
    best = minimize(lambda v: -ll(v[0], v[1]), start, method="L-BFGS-B", bounds=[(-_LIMIT, _LIMIT)] * 2)
    a, b = (float(v) for v in best.x)
    top = ll(a, b)
    target = top - CHI2_95 / 2

    def interval(profile, at: float) -> tuple[float, float]:
        out = []
        for edge in (-_LIMIT, _LIMIT):
            if profile(edge) >= target:
                out.append(edge)
            else:
                out.append(brentq(lambda x: profile(x) - target, edge, at, xtol=1e-4))
        return out[0], out[1]

    psi_lo, psi_hi = interval(lambda x: _argmax(lambda y: ll(x, y))[1], a)
    p_lo, p_hi = interval(lambda y: _argmax(lambda x: ll(x, y))[1], b)
    return Occupancy(_expit(a), _expit(psi_lo), _expit(psi_hi), _expit(b), _expit(p_lo), _expit(p_hi),
                     ll.sites, ll.detected, ll.occasions, top)


def simulate(rng: np.random.Generator, sites: int, occasions: int, psi: float, p: float,
             missing: float = 0.0) -> np.ndarray:
    """A detection history drawn from the model: (sites, occasions) of 1, 0 and NaN (a share `missing`)."""
    occupied = rng.random(sites) < psi
    h = ((rng.random((sites, occasions)) < p) & occupied[:, None]).astype(np.float64)
    h[rng.random((sites, occasions)) < missing] = np.nan
    return h

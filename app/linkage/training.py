"""Parameter estimation for the Fellegi–Sunter model in :mod:`app.linkage.matching`.

Pure functions, used by ``benchmarks/linkage_febrl.py`` and available to an admin job
that re-fits parameters on a site's own data:

* :func:`estimate_u` — u probabilities from random record pairs (almost all of which are
  different people), as Splink's ``estimate_u_using_random_sampling``.
* :func:`fit_em` — expectation–maximisation (Winkler 1988) over the comparison vectors
  of the candidate pairs that blocking produced.  m (and optionally u and the share of
  matches) are re-estimated from unlabelled pairs; start values are the current params.
  Levels are additively smoothed so no level's m or u becomes exactly 0.
* :func:`fit_household` — the same EM over the candidate pairs that give one home
  (``matching.in_one_household``), m held: the share of same-person pairs among them
  (the household prior) and u of two different people of one household.

EM runs on distinct comparison vectors with counts, so it costs O(patterns × iterations),
not O(pairs).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace
from typing import Iterable, Sequence

from app.linkage.matching import (
    COMPARISON_LEVELS,
    COMPARISONS,
    HOUSEHOLD_SHARED,
    RESIDENCE,
    HouseholdParams,
    MatchParams,
    PersonRecord,
    comparison_vector,
    in_one_household,
)

Vector = tuple[int | None, ...]


def estimate_u(
    left: Sequence[PersonRecord],
    right: Sequence[PersonRecord] | None,
    params: MatchParams,
    max_pairs: int = 100_000,
    seed: int = 1,
    smoothing: float = 0.5,
) -> MatchParams:
    """u from ``max_pairs`` random pairs (left×right for a link job, left×left for dedupe).
    Comparisons never observed (no data on either side) keep their current u."""
    rng = random.Random(seed)
    right = right if right is not None else left
    counts = {name: [0.0] * len(COMPARISON_LEVELS[name]) for name in COMPARISONS}
    for _ in range(max_pairs):
        a, b = rng.choice(left), rng.choice(right)
        if a is b:
            continue
        for name, level in zip(COMPARISONS, comparison_vector(a, b)):
            if level is not None:
                counts[name][level] += 1
    u = dict(params.u)
    for name in COMPARISONS:
        total = sum(counts[name])
        if total > 0:
            k = len(counts[name])
            u[name] = tuple((c + smoothing) / (total + smoothing * k) for c in counts[name])
    return replace(params, m=dict(params.m), u=u)


def _match_posterior(vec: Vector, names: Sequence[str], lam: float, m, u) -> float:
    """EM's E-step for one comparison pattern: P(same person | the levels), missing levels neutral."""
    lm, lu = math.log(lam), math.log(1.0 - lam)
    for name, level in zip(names, vec):
        if level is not None:
            lm += math.log(max(m[name][level], 1e-300))
            lu += math.log(max(u[name][level], 1e-300))
    diff = lu - lm
    return 0.0 if diff > 700 else 1.0 / (1.0 + math.exp(diff))


def fit_em(
    vectors: Iterable[Vector],
    params: MatchParams,
    *,
    fix_u: bool = False,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.5,
) -> tuple[MatchParams, float]:
    """EM over candidate-pair comparison vectors.

    Returns (params, match share among the candidate pairs).  The returned params' prior
    is that share, so they score *candidate* pairs (the population the matcher sees);
    swap the prior back if you need the random-pair prior.
    """
    patterns = Counter(tuple(v) for v in vectors)
    items = list(patterns.items())
    n_total = float(sum(patterns.values()))
    m = {k: list(v) for k, v in params.m.items()}
    u = {k: list(v) for k, v in params.u.items()}
    lam = 0.1  # start: one candidate pair in ten is a match
    for _ in range(max_iter):
        # E-step
        m_cnt = {name: [0.0] * len(COMPARISON_LEVELS[name]) for name in COMPARISONS}
        u_cnt = {name: [0.0] * len(COMPARISON_LEVELS[name]) for name in COMPARISONS}
        matched = 0.0
        for vec, count in items:
            p = _match_posterior(vec, COMPARISONS, lam, m, u)
            matched += p * count
            for name, level in zip(COMPARISONS, vec):
                if level is not None:
                    m_cnt[name][level] += p * count
                    u_cnt[name][level] += (1.0 - p) * count
        # M-step
        new_lam = matched / n_total
        delta = abs(new_lam - lam)
        lam = min(max(new_lam, 1e-9), 1 - 1e-9)
        for name in COMPARISONS:
            k = len(COMPARISON_LEVELS[name])
            tm = sum(m_cnt[name])
            if tm > 0:
                new_m = [(c + smoothing) / (tm + smoothing * k) for c in m_cnt[name]]
                delta = max(delta, max(abs(x - y) for x, y in zip(new_m, m[name])))
                m[name] = new_m
            tu = sum(u_cnt[name])
            if not fix_u and tu > 0:
                new_u = [(c + smoothing) / (tu + smoothing * k) for c in u_cnt[name]]
                delta = max(delta, max(abs(x - y) for x, y in zip(new_u, u[name])))
                u[name] = new_u
        if delta < tol:
            break
    fitted = replace(
        params,
        m={k: tuple(v) for k, v in m.items()},
        u={k: tuple(v) for k, v in u.items()},
        prior=lam,
    )
    return fitted, lam


def fit_household(
    vectors: Iterable[Vector],
    params: MatchParams,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    anchor: float = 20.0,
) -> MatchParams:
    """The household parameters from the candidate pairs that give one home, by EM with m
    held at ``params.m`` (a person's own records agree as often wherever they live).

    Each household u is pulled towards its start value (``params.household``) by
    ``anchor`` pseudo-pairs, so data with few different people under one roof (FEBRL4 has
    none) keeps the shipped household structure rather than a guess from a handful."""
    start = params.household or HouseholdParams(prior=0.3, u={n: params.u[n] for n in HOUSEHOLD_SHARED})
    names = [n for n in COMPARISONS if n not in RESIDENCE]
    idx = [COMPARISONS.index(n) for n in names]
    patterns = Counter(tuple(v[i] for i in idx) for v in vectors if in_one_household(v))
    if not patterns:
        return params
    items = list(patterns.items())
    n_total = float(sum(patterns.values()))
    m = {n: params.m[n] for n in names}
    u = {n: list(start.u.get(n, params.u[n])) for n in names}
    lam = start.prior
    for _ in range(max_iter):
        u_cnt = {n: [0.0] * len(COMPARISON_LEVELS[n]) for n in HOUSEHOLD_SHARED}
        matched = 0.0
        for vec, count in items:
            p = _match_posterior(vec, names, lam, m, u)
            matched += p * count
            for n, level in zip(names, vec):
                if level is not None and n in u_cnt:
                    u_cnt[n][level] += (1.0 - p) * count
        new_lam = min(max(matched / n_total, 1e-6), 1 - 1e-6)
        delta = abs(new_lam - lam)
        lam = new_lam
        for n in HOUSEHOLD_SHARED:
            total = sum(u_cnt[n])
            prior_u = start.u.get(n, params.u[n])
            new_u = [(c + anchor * pu) / (total + anchor) for c, pu in zip(u_cnt[n], prior_u)]
            delta = max(delta, max(abs(x - y) for x, y in zip(new_u, u[n])))
            u[n] = new_u
        if delta < tol:
            break
    return replace(params, household=HouseholdParams(prior=lam, u={n: tuple(u[n]) for n in HOUSEHOLD_SHARED}))

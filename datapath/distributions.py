"""The jitter's distributions: the tables the classifier draws from, and correlated draws.

A table is DIST_SIZE quantiles of a distribution in units of 1/DIST_SCALE of the jitter (netem's
size and scale, abi.h): entry k is the quantile (4k + 1/2) / 16384, as netem's generators take
it. The delay of a packet is latency + jitter * table[q] / DIST_SCALE for a uniform index q,
clamped at 0 (datapath/bpf/delay.h). The tables are made here from their definitions (netem's,
docs/semantics.md "Delay distributions"), not read from files:

- normal: the standard normal's quantiles;
- pareto: Pareto with shape 3, shifted to mean 0 and scaled by 4/3 (its quantile is
  (1 - u)^(-1/3) - 3/2 before the scale), cut at 4 jitters;
- paretonormal: a quarter of the normal plus three quarters of the pareto, quantile by quantile.

Correlation (`delay_correlation`) moves a latent standard normal z by z' = a z + b e (e a normal
draw, a^2 + b^2 = 1) and takes q from z' through the normal CDF, so each draw keeps the table's
distribution. The delays' lag-1 correlation is then a little below a for a table that is not
normal: `latent_rho` finds the a that gives the configured one, from the table's Hermite
expansion (Cov(g(Z1), g(Z2)) = sum over k >= 1 of E[g He_k]^2 a^k / k! for standard normals of
correlation a).
"""
from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

__all__ = ["DIST_SCALE", "DIST_SIZE", "CDF_SIZE", "DIST_IDS", "table", "cdf_table",
           "max_offset", "latent_rho", "fixed_point", "custom_table", "table_key", "table_of",
           "read_dist_file"]

DIST_SCALE = 8192
DIST_SIZE = 4096
CDF_SIZE = 16384
CDF_STEPS_PER_SIGMA = 2048
S16 = (-32768, 32767)

# schemas' names -> enum moa_dist (abi.h; tests/test_classifier_delay.py checks them against BTF).
DIST_IDS = {"uniform": 0, "normal": 1, "pareto": 2, "paretonormal": 3, "custom": 4}
NETEM_DIST_MAX = 16384  # the most values iproute2 reads from a .dist file (tc/q_netem.c)

_NORMAL = NormalDist()


def _s16(v: float) -> int:
    return max(S16[0], min(S16[1], int(v)))


def _quantile(k: int) -> float:
    return (4 * k + 0.5) / (4 * DIST_SIZE)


def _normal() -> list[int]:
    return [_s16(round(_NORMAL.inv_cdf(_quantile(k)) * DIST_SCALE)) for k in range(DIST_SIZE)]


def _pareto_value(k: int) -> int:
    u = (65536 - 16 * k) / 65536          # netem's pareto walks the quantiles from the top
    return round(min((u ** (-1 / 3) - 1.5) * (4 / 3) * DIST_SCALE, S16[1]))


def _pareto() -> list[int]:
    return [_pareto_value(k) for k in range(DIST_SIZE)]


def _paretonormal() -> list[int]:
    n = _normal()
    # C's integer division truncates toward zero.
    return [_s16(int((n[k] + 3 * _pareto_value(k)) / 4)) for k in range(DIST_SIZE)]


def _uniform() -> list[int]:
    """Uniform in [-1, 1) jitter as a table: not what the classifier draws from (it needs no
    table), but what the calibration and the tests compare with."""
    return [round((2 * (k + 0.5) / DIST_SIZE - 1) * DIST_SCALE) for k in range(DIST_SIZE)]


_MAKERS = {"uniform": _uniform, "normal": _normal, "pareto": _pareto,
           "paretonormal": _paretonormal}


@lru_cache(maxsize=None)
def table(name: str) -> tuple[int, ...]:
    """The DIST_SIZE quantiles of the named distribution, in 1/DIST_SCALE of the jitter."""
    return tuple(_MAKERS[name]())


# -- custom tables -----------------------------------------------------------------------------
#
# A custom table (Emulation.distribution_table: netem's .dist values, docs/semantics.md "Delay
# distributions") is any list of values in 1/DIST_SCALE of the jitter; netem draws an entry
# uniformly, so the distribution is the values' empirical one whatever their order. moa holds
# it as the built-in tables are held: DIST_SIZE quantiles, sorted (the correlated draw reads a
# quantile index), entry k the value at rank floor((k + 1/2) n / DIST_SIZE) of the n sorted
# values - a table of DIST_SIZE values is held exactly, a longer one thinned evenly, a shorter
# one repeated evenly.

@lru_cache(maxsize=256)
def custom_table(values: tuple[int, ...]) -> tuple[int, ...]:
    """The DIST_SIZE sorted quantiles moa holds for a custom table's values."""
    v = sorted(values)
    n = len(v)
    return tuple(v[(2 * k + 1) * n // (2 * DIST_SIZE)] for k in range(DIST_SIZE))


@lru_cache(maxsize=256)
def table_key(values: tuple[int, ...]) -> int:
    """The custom table's key in moa_dist_custom (stage_params.dist_key): 32 bits of a hash of
    the table moa holds, never 0."""
    import hashlib
    held = custom_table(values)
    digest = hashlib.sha256(b"".join(x.to_bytes(2, "little", signed=True) for x in held))
    return int.from_bytes(digest.digest()[:4], "little") or 1


def table_of(name: str, values: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The table a stage draws from: the named one, or with `values` its custom table."""
    return custom_table(values) if name == "custom" and values else table(name)


def read_dist_file(text: str) -> list[int]:
    """The values of an iproute2 .dist file (tc/q_netem.c's get_distribution): whitespace-
    separated integers, `#` starting a comment line, at most NETEM_DIST_MAX; ValueError naming
    what is wrong."""
    out: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for word in line.split():
            try:
                v = int(word, 10)
            except ValueError:
                raise ValueError(f"line {lineno}: {word!r} is not an integer") from None
            if not S16[0] <= v <= S16[1]:
                raise ValueError(f"line {lineno}: {v} is outside a 16-bit value")
            out.append(v)
            if len(out) > NETEM_DIST_MAX:
                raise ValueError(f"more than {NETEM_DIST_MAX} values")
    if len(out) < 2:
        raise ValueError("a table needs at least 2 values")
    return out


@lru_cache(maxsize=1)
def cdf_table() -> tuple[int, ...]:
    """u[j] = floor(Phi(z) * DIST_SIZE) for z = (j - CDF_SIZE / 2) / CDF_STEPS_PER_SIGMA."""
    return tuple(min(DIST_SIZE - 1, max(0, int(_NORMAL.cdf(
        (j - CDF_SIZE // 2) / CDF_STEPS_PER_SIGMA) * DIST_SIZE))) for j in range(CDF_SIZE))


def max_offset(name: str, values: tuple[int, ...] | None = None) -> float:
    """The largest delay above latency, in jitters (uniform: 1; pareto: 4; a custom table: its
    largest value, at least 1)."""
    if name == "uniform":
        return 1.0
    return max(1.0, max(table_of(name, values)) / DIST_SCALE)


# -- correlation -------------------------------------------------------------------------------

_GRID = 8  # latent points per table entry for the expectations below
_TERMS = 24


@lru_cache(maxsize=64)
def _hermite_weights(t: tuple[int, ...]) -> tuple[tuple[float, ...], float]:
    """(E[g He_k]^2 / k! for k = 1.._TERMS, Var g) of g(z) = t[floor(Phi(z) * DIST_SIZE)]."""
    m = DIST_SIZE * _GRID
    zs = [_NORMAL.inv_cdf((i + 0.5) / m) for i in range(m)]
    gs = [t[i // _GRID] / DIST_SCALE for i in range(m)]
    mean = sum(gs) / m
    var = sum((g - mean) ** 2 for g in gs) / m
    he_prev, he = [1.0] * m, zs[:]
    weights = []
    for k in range(1, _TERMS + 1):
        c = sum(g * h for g, h in zip(gs, he)) / m
        weights.append(c * c / math.factorial(k))
        he_prev, he = he, [z * h - k * hp for z, h, hp in zip(zs, he, he_prev)]
    return tuple(weights), var


def delay_correlation(name: str, a: float, values: tuple[int, ...] | None = None) -> float:
    """The lag-1 correlation of the delays when the latent normal's is `a`."""
    weights, var = _hermite_weights(table_of(name, values))
    if not var:  # a constant table: every delay the same, any correlation
        return a
    head = sum(w * a ** (k + 1) for k, w in enumerate(weights))
    rest = max(0.0, var - sum(weights)) * a ** (len(weights) + 1)  # the terms left, at most this
    return (head + rest) / var


@lru_cache(maxsize=4096)
def latent_rho(name: str, rho: float, values: tuple[int, ...] | None = None) -> float:
    """The latent correlation whose delays have lag-1 correlation `rho` (0 <= rho < 1)."""
    if rho <= 0.0:
        return 0.0
    lo, hi = rho, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if delay_correlation(name, mid, values) < rho:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fixed_point(name: str, rho: float, values: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(delay_rho, delay_innov) of struct moa_stage_params: a and sqrt(1 - a^2) over 2^16;
    (0, 0) without correlation."""
    if rho <= 0.0:
        return 0, 0
    a = latent_rho(name, rho, values)
    return round(a * 65536), max(1, round(math.sqrt(1 - a * a) * 65536))

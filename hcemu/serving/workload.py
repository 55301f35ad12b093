"""Request traces: arrival times and prompt/output lengths, synthetic or replayed from a CSV file.

A :class:`Workload` holds three aligned arrays (arrival seconds from 0, sorted; prompt tokens >= 1;
output tokens >= 1). :func:`synthetic` draws one (Poisson arrivals, or gamma-distributed gaps for
bursty traffic; fixed, exponential or lognormal lengths); :func:`read_trace` replays a CSV in the layout
of the Azure LLM inference traces (``TIMESTAMP, ContextTokens, GeneratedTokens``; timestamps as
date-times or as seconds).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("poisson", "gamma")
LENGTH_DISTS = ("fixed", "exponential", "lognormal")
TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order: ``arrival_s`` (float64, from 0), ``prompt_tokens``, ``output_tokens`` (int64)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    label: str = ""

    def __post_init__(self):
        a, p, g = (np.asarray(x) for x in (self.arrival_s, self.prompt_tokens, self.output_tokens))
        if not (a.ndim == p.ndim == g.ndim == 1 and a.size == p.size == g.size):
            raise ValueError(f"arrival_s, prompt_tokens and output_tokens must be 1-D of one length, got "
                             f"shapes {a.shape}, {p.shape}, {g.shape}")
        if a.size and (not np.all(np.isfinite(a)) or a[0] < 0 or np.any(np.diff(a) < 0)):
            raise ValueError("arrival_s must be finite, >= 0 and sorted")
        if p.size and (p.min() < 1 or g.min() < 1):
            raise ValueError("every request needs prompt_tokens >= 1 and output_tokens >= 1")
        object.__setattr__(self, "arrival_s", a.astype(np.float64))
        object.__setattr__(self, "prompt_tokens", p.astype(np.int64))
        object.__setattr__(self, "output_tokens", g.astype(np.int64))

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def scaled(self, rate_factor: float) -> "Workload":
        """The same requests arriving ``rate_factor`` times as fast (gaps divided by it)."""
        if not rate_factor > 0:
            raise ValueError(f"rate_factor must be > 0, got {rate_factor}")
        return Workload(self.arrival_s / rate_factor, self.prompt_tokens, self.output_tokens,
                        f"{self.label} x{rate_factor:g}")


def _lengths(rng, dist: str, mean: float, n: int, sigma: float, cap: int) -> np.ndarray:
    if not mean >= 1:
        raise ValueError(f"mean length must be >= 1 token, got {mean}")
    if dist == "fixed":
        x = np.full(n, round(mean), dtype=np.int64)
    elif dist == "exponential":  # geometric on 1, 2, ... with this mean
        x = rng.geometric(1.0 / mean, n) if mean > 1 else np.ones(n, np.int64)
    elif dist == "lognormal":
        mu = math.log(mean) - sigma * sigma / 2
        x = np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(np.int64)
    else:
        raise ValueError(f"unknown length distribution {dist!r}; known: {', '.join(LENGTH_DISTS)}")
    return np.minimum(x, cap)


def synthetic(rate: float, *, duration_s: float | None = None, n_requests: int | None = None,
              arrival: str = "poisson", cv: float = 2.0, prompt_mean: float = 1024, output_mean: float = 256,
              length_dist: str = "fixed", sigma: float = 1.0, max_tokens: int = 32768, seed: int = 0) -> Workload:
    """``rate`` requests/s for ``duration_s`` seconds (or ``n_requests`` requests).

    arrival: ``poisson`` (exponential gaps) or ``gamma`` (gaps with coefficient of variation ``cv``:
    shape ``1/cv^2``; cv > 1 is burstier than Poisson, cv = 1 is Poisson). length_dist: ``fixed``,
    ``exponential`` (geometric, mean as given) or ``lognormal`` (log-sd ``sigma``, mean as given);
    lengths are capped at ``max_tokens``."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number of requests/s > 0, got {rate!r}")
    if (duration_s is None) == (n_requests is None):
        raise ValueError("give exactly one of duration_s and n_requests")
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {arrival!r}; known: {', '.join(ARRIVALS)}")
    if arrival == "gamma" and not cv > 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    rng = np.random.default_rng(seed)
    n = int(n_requests) if n_requests is not None else int(math.ceil(rate * float(duration_s) * 1.2 + 10))
    if n < 1:
        raise ValueError(f"need at least one request, got n_requests={n_requests}")
    gaps = (rng.exponential(1.0 / rate, n) if arrival == "poisson"
            else rng.gamma(1.0 / cv ** 2, cv ** 2 / rate, n))
    t = np.cumsum(gaps) - gaps[0]
    if duration_s is not None:
        t = t[t < duration_s]
        n = t.size
    p = _lengths(rng, length_dist, prompt_mean, n, sigma, max_tokens)
    g = _lengths(rng, length_dist, output_mean, n, sigma, max_tokens)
    return Workload(t, p, g, f"{arrival} {rate:g} req/s, {length_dist} {prompt_mean:g}/{output_mean:g} tokens")


def _seconds(stamps: list[str]) -> np.ndarray:
    try:
        return np.asarray([float(s) for s in stamps])
    except ValueError:
        pass
    try:
        t = np.asarray([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[ns]")
    except ValueError as exc:
        raise ValueError(f"TIMESTAMP values must be seconds or ISO date-times: {exc}") from None
    return (t - t.min()).astype(np.int64) / 1e9


def read_trace(path: str | os.PathLike, *, max_requests: int | None = None, rate_factor: float = 1.0) -> Workload:
    """A CSV trace in the Azure LLM inference layout: columns ``TIMESTAMP`` (date-time, e.g.
    ``2023-11-16 18:15:46.6805900``, or seconds), ``ContextTokens``, ``GeneratedTokens``; other columns
    are ignored. Arrivals are shifted to start at 0 and sorted; a request with 0 generated tokens gets
    1 (the trace counts the first token separately in some rows). ``rate_factor`` replays it faster."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: trace lacks column(s) {missing}; expected {list(TRACE_COLUMNS)}, "
                             f"found {reader.fieldnames}")
        stamps, ctx, gen = [], [], []
        for row in reader:
            if max_requests is not None and len(stamps) >= max_requests:
                break
            try:
                ctx.append(int(row["ContextTokens"]))
                gen.append(int(row["GeneratedTokens"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {reader.line_num}: token counts must be integers, got "
                                 f"{row['ContextTokens']!r}, {row['GeneratedTokens']!r}") from None
            stamps.append(row["TIMESTAMP"])
    if not stamps:
        raise ValueError(f"{path}: the trace holds no request")
    t = _seconds(stamps)
    ctx, gen = np.asarray(ctx, np.int64), np.asarray(gen, np.int64)
    if ctx.min() < 1 or gen.min() < 0:
        raise ValueError(f"{path}: ContextTokens must be >= 1 and GeneratedTokens >= 0")
    order = np.argsort(t, kind="stable")
    w = Workload(t[order], ctx[order], np.maximum(gen[order], 1), f"trace {os.path.basename(path)}")
    return w.scaled(rate_factor) if rate_factor != 1.0 else w

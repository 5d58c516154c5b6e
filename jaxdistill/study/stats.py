"""Study statistics: intervals over seeds and examples, paired tests between variants, Holm's
correction, NLI "complex sample" subsets and leakage-adjusted simulatability (LAS).

Every function is pure (numpy/scipy on its arguments; bootstraps draw from their own seeded
generator). Correctness arrays are booleans (or 0/1), shaped [n_examples] for one run or
[n_seeds, n_examples] for one variant over seeds, with columns aligned by example id (`align`).
Intervals are returned as (estimate, low, high); the phi coefficient lives in traces/stats.py.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats as sps

DEFAULT_RESAMPLES = 2000
# Resampled example indices held in memory at once (resamples x examples per chunk).
_CHUNK_ELEMENTS = 2_000_000


# --- intervals --------------------------------------------------------------------------------

def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the mean of per-seed values with a Student-t interval, n-1 degrees of
  freedom: mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n), sd with ddof=1.

  With one value the spread between seeds is unknown, so the interval is undefined: (mean, nan,
  nan), never a zero-width interval. No values raises ValueError."""
  x = np.asarray(values, dtype=float).ravel()
  if x.size == 0:
    raise ValueError("t_interval of no values")
  mean = float(x.mean())
  if x.size == 1:
    return mean, math.nan, math.nan
  half = sps.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return mean, float(mean - half), float(mean + half)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
  """(p, low, high): the proportion successes / n with its Wilson score interval,
  (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z the normal (1+confidence)/2
  quantile. Unlike the Wald interval it stays inside [0, 1] and is not empty at p = 0 or 1."""
  if n <= 0 or not 0 <= successes <= n:
    raise ValueError(f"wilson_interval needs 0 <= successes <= n and n > 0 (got {successes}, {n})")
  p = successes / n
  z = sps.norm.ppf((1 + confidence) / 2)
  scale = 1 + z * z / n
  center = (p + z * z / (2 * n)) / scale
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
  return p, float(max(0.0, center - half)), float(min(1.0, center + half))


# --- bootstraps over examples -----------------------------------------------------------------

def _as_bool(values: Any, name: str) -> np.ndarray:
  """values as a bool array; refuses anything but booleans or 0/1 (a 0.5 is no outcome)."""
  arr = np.asarray(values)
  if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
    raise ValueError(f"{name}: values must be booleans or 0/1")
  return arr.astype(bool)


def _as_correct(correct: Any, name: str = "correct") -> np.ndarray:
  """A boolean or 0/1 array, [n_examples] or [n_seeds, n_examples], as float [n_seeds, n_examples]."""
  arr = _as_bool(correct, name)
  if arr.ndim not in (1, 2):
    raise ValueError(f"{name}: expected [n_examples] or [n_seeds, n_examples], got shape {arr.shape}")
  arr = np.atleast_2d(arr).astype(float)
  if arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{name}: no seeds or no examples (shape {arr.shape})")
  return arr


def _resampled_means(per_example: np.ndarray, resamples: int, seed: int) -> np.ndarray:
  """[resamples] means of per_example over example indices drawn with replacement; deterministic
  given seed (indices are drawn in fixed-size chunks to bound memory)."""
  rng = np.random.default_rng(seed)
  n = per_example.size
  chunk = max(1, _CHUNK_ELEMENTS // n)
  out = np.empty(resamples)
  for start in range(0, resamples, chunk):
    size = min(chunk, resamples - start)
    out[start:start + size] = per_example[rng.integers(0, n, size=(size, n))].mean(axis=1)
  return out


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
  alpha = 1 - confidence
  low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
  return float(low), float(high)


def bootstrap_ci(correct: Any, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
  """(accuracy, low, high): accuracy over all seeds and examples with a percentile bootstrap over
  examples. Each resample draws n_examples example indices with replacement and averages every
  seed's correctness at those indices (seeds pooled, an example kept paired across seeds, so
  per-example difficulty is resampled, not seed noise); low/high are the (1-confidence)/2 and
  (1+confidence)/2 quantiles (numpy's linear interpolation) of the resampled accuracies."""
  per_example = _as_correct(correct).mean(axis=0)
  samples = _resampled_means(per_example, resamples, seed)
  return (float(per_example.mean()), *_percentiles(samples, confidence))


class PairedResult(NamedTuple):
  diff: float  # accuracy(b) - accuracy(a)
  low: float
  high: float
  p_value: float


def paired_bootstrap(a: Any, b: Any, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> PairedResult:
  """(diff, low, high, p_value) for diff = accuracy(b) - accuracy(a) (positive: b is better).

  a and b are [n_examples] or [n_seeds, n_examples] with the same examples in the same columns
  (their seed counts may differ). Per example d_i = mean over b's seeds - mean over a's seeds;
  each resample draws example indices with replacement, the same indices for a and b, and
  averages d_i over them. low/high: percentile interval of the resampled differences.
  p_value = min(1, 2 * min(P*(d <= 0), P*(d >= 0))), P* the share of resamples (ties at 0 count
  on both sides): about the smallest two-sided level at which the percentile interval excludes 0.
  Identical a and b give p = 1; p = 0 means no resample fell at or beyond 0 (report p < 2/resamples)."""
  a2, b2 = _as_correct(a, "a"), _as_correct(b, "b")
  if a2.shape[1] != b2.shape[1]:
    raise ValueError(f"a and b must cover the same examples (got {a2.shape[1]} and {b2.shape[1]})")
  per_example = b2.mean(axis=0) - a2.mean(axis=0)
  samples = _resampled_means(per_example, resamples, seed)
  p_value = min(1.0, 2 * min(float(np.mean(samples <= 0)), float(np.mean(samples >= 0))))
  return PairedResult(float(per_example.mean()), *_percentiles(samples, confidence), p_value)


# --- exact McNemar and Holm -------------------------------------------------------------------

def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
  """(b01, b10, p_value) for two runs on the same examples (aligned by id): b01 = a wrong and b
  right, b10 = a right and b wrong. p is the exact two-sided binomial test of the discordant
  pairs against p = 1/2: min(1, 2 * P(Binomial(b01 + b10, 1/2) <= min(b01, b10))); 1 when there
  are no discordant pairs (nothing tells the runs apart)."""
  a, b = _as_bool(a_correct, "a_correct"), _as_bool(b_correct, "b_correct")
  if a.ndim != 1 or a.shape != b.shape:
    raise ValueError(f"mcnemar_exact needs two aligned [n_examples] arrays (got {a.shape}, {b.shape})")
  b01, b10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
  n = b01 + b10
  p_value = 1.0 if n == 0 else min(1.0, 2 * float(sps.binom.cdf(min(b01, b10), n, 0.5)))
  return b01, b10, p_value


def holm(p_values: Mapping[str, float] | Sequence[float], alpha: float = 0.05) -> tuple[Any, Any]:
  """(adjusted, significant): Holm-Bonferroni step-down over m tests. With p sorted ascending,
  adjusted_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)) (monotone in p, at most 1), and a test
  is significant when adjusted <= alpha: the family-wise error rate is at most alpha. A mapping
  gives dicts by the same keys; a sequence gives lists in its order."""
  keys = list(p_values) if isinstance(p_values, Mapping) else None
  p = np.asarray([p_values[k] for k in keys] if keys is not None else list(p_values), dtype=float)
  if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
    raise ValueError(f"holm: p-values must lie in [0, 1] (got {p.tolist()})")
  m = p.size
  order = np.argsort(p, kind="stable")
  stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
  adjusted = np.empty(m)
  adjusted[order] = np.maximum.accumulate(stepped)
  significant = adjusted <= alpha
  if keys is not None:
    return ({k: float(v) for k, v in zip(keys, adjusted)},
            {k: bool(s) for k, s in zip(keys, significant)})
  return [float(v) for v in adjusted], [bool(s) for s in significant]


# --- aligning runs by example id --------------------------------------------------------------

def _ids_preview(ids: Sequence[Any], limit: int = 10) -> str:
  shown = ", ".join(repr(i) for i in ids[:limit])
  return f"[{shown}{', ...' if len(ids) > limit else ''}] ({len(ids)})"


def align(predictions_by_run: Mapping[str, Sequence[Mapping[str, Any]]]
          ) -> tuple[list[Any], dict[str, list[Mapping[str, Any]]]]:
  """(ids, rows_by_run): every run's prediction rows reordered to one id order (the first run's).

  Runs must have predicted exactly the same examples, each once: otherwise ValueError naming the
  run and its missing and extra ids (relative to the first run) or its duplicated ids. Examples
  are never silently dropped, since accuracies over different examples are not comparable."""
  if not predictions_by_run:
    raise ValueError("align: no runs")
  by_run: dict[str, dict[Any, Mapping[str, Any]]] = {}
  for run, rows in predictions_by_run.items():
    by_id: dict[Any, Mapping[str, Any]] = {}
    duplicated = []
    for row in rows:
      if row["id"] in by_id:
        duplicated.append(row["id"])
      by_id[row["id"]] = row
    if duplicated:
      raise ValueError(f"run {run!r} predicted some ids more than once: {_ids_preview(duplicated)}")
    by_run[run] = by_id
  reference_run, reference = next(iter(by_run.items()))
  ids = list(reference)
  for run, by_id in by_run.items():
    missing = [i for i in ids if i not in by_id]
    extra = [i for i in by_id if i not in reference]
    if missing or extra:
      raise ValueError(f"run {run!r} did not predict the same examples as {reference_run!r}: "
                       f"missing {_ids_preview(missing)}, extra {_ids_preview(extra)}")
  return ids, {run: [by_id[i] for i in ids] for run, by_id in by_run.items()}


def correct_matrix(rows_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
                   runs: Sequence[str]) -> np.ndarray:
  """bool [len(runs), n_examples]: the "correct" field of aligned rows (from `align`), one row per
  run in the given order (e.g. one variant's seeds)."""
  return np.asarray([[bool(r["correct"]) for r in rows_by_run[run]] for run in runs], dtype=bool)


# --- NLI "complex sample" subsets -------------------------------------------------------------

NEGATION_WORDS = frozenset({"not", "no", "never", "nobody", "nothing", "none", "nowhere",
                            "neither", "nor", "cannot", "without"})
_CONTRACTED_NOT = re.compile(r"n['\u2019]t\b")  # don't, isn't, and tokenized "do n't"
OVERLAP_CUTS = (1 / 3, 2 / 3)  # low < 1/3 <= mid < 2/3 <= high
LENGTH_CUTS = (20, 30)  # total words: short < 20 <= medium < 30 <= long


def words(text: str) -> list[str]:
  """Lowercased words: apostrophes removed (don't -> dont), then split at every character that is
  not a letter or digit (punctuation, hyphens and underscores separate words)."""
  return re.findall(r"[^\W_]+", re.sub(r"['\u2019]", "", text.lower()))


def lexical_overlap(premise: str, hypothesis: str) -> float:
  """The share of the hypothesis's distinct words that also occur in the premise (words as in
  `words`), in [0, 1]; nan for a hypothesis without words (undefined, not 0)."""
  hyp = set(words(hypothesis))
  if not hyp:
    return math.nan
  return len(hyp & set(words(premise))) / len(hyp)


def overlap_bucket(overlap: float, cuts: tuple[float, float] = OVERLAP_CUTS) -> str:
  """"low" below cuts[0], "mid" below cuts[1], "high" from cuts[1] on (defaults 1/3 and 2/3, so a
  3-word hypothesis sharing 1 word is mid and sharing 2 is high); "none" for nan (no words)."""
  if math.isnan(overlap):
    return "none"
  return "low" if overlap < cuts[0] else "mid" if overlap < cuts[1] else "high"


def has_negation(hypothesis: str) -> bool:
  """Whether the hypothesis contains a negation: a word of NEGATION_WORDS (not, no, never, nobody,
  nothing, none, nowhere, neither, nor, cannot, without) or a contracted n't (don't, isn't, won't).
  Negation words in hypotheses are a known annotation artifact cue for contradiction."""
  return bool(NEGATION_WORDS.intersection(words(hypothesis))
              or _CONTRACTED_NOT.search(hypothesis.lower()))


def length_bucket(premise: str, hypothesis: str, cuts: tuple[int, int] = LENGTH_CUTS) -> str:
  """By the total word count of premise and hypothesis (words as in `words`): "short" below
  cuts[0], "medium" below cuts[1], "long" from cuts[1] on. The defaults (20, 30) suit SNLI-style
  pairs (about 14 premise + 8 hypothesis words on average), so "long" is the tail."""
  total = len(words(premise)) + len(words(hypothesis))
  return "short" if total < cuts[0] else "medium" if total < cuts[1] else "long"


def subset_accuracy(rows: Sequence[Mapping[str, Any]], key_fn: Callable[[Mapping[str, Any]], Hashable]
                    ) -> dict[Hashable, dict[str, Any]]:
  """Per bucket key_fn(row): {"accuracy": correct / count, "correct": int, "count": int}, buckets
  in first-seen order; only buckets with rows appear. Rows need a "correct" field (rows of several
  seeds may be passed together: the accuracy then pools them)."""
  counts: dict[Hashable, list[int]] = {}
  for row in rows:
    tally = counts.setdefault(key_fn(row), [0, 0])
    tally[0] += bool(row["correct"])
    tally[1] += 1
  return {k: {"accuracy": c / n, "correct": c, "count": n} for k, (c, n) in counts.items()}


# --- leakage-adjusted simulatability ----------------------------------------------------------

class LasResult(NamedTuple):
  las: float
  leaked_effect: float | None  # mean(with - without) over leaked examples; None when there are none
  nonleaked_effect: float | None  # the same over non-leaked examples
  n_leaked: int
  n_nonleaked: int
  groups: int  # how many groups LAS averages: 2, or 1 when a group is empty


def leakage_adjusted_simulatability(sim_with: Sequence[bool], sim_without: Sequence[bool],
                                    leaked: Sequence[bool]) -> LasResult:
  """LAS (Hase et al. 2020): per example, sim_with says a simulator given input + explanation
  predicts the model's label, sim_without the same from the input alone, leaked that a simulator
  given the explanation alone predicts it. The effect of a group is mean(sim_with - sim_without)
  over its examples, and LAS = 0.5 * leaked effect + 0.5 * non-leaked effect: explanations that
  merely restate the label cannot raise LAS more than half.

  When one group is empty its effect is None and LAS is the other group's effect alone (groups
  = 1 reports it); no examples raises ValueError."""
  w, wo, lk = (_as_bool(x, name) for x, name in
                ((sim_with, "sim_with"), (sim_without, "sim_without"), (leaked, "leaked")))
  if not (w.ndim == 1 and w.shape == wo.shape == lk.shape):
    raise ValueError(f"LAS needs three aligned [n_examples] arrays (got {w.shape}, {wo.shape}, {lk.shape})")
  if w.size == 0:
    raise ValueError("LAS of no examples")
  gain = w.astype(float) - wo.astype(float)
  effects = [float(gain[mask].mean()) if mask.any() else None for mask in (lk, ~lk)]
  present = [e for e in effects if e is not None]
  return LasResult(las=sum(present) / len(present), leaked_effect=effects[0],
                   nonleaked_effect=effects[1], n_leaked=int(lk.sum()), n_nonleaked=int((~lk).sum()),
                   groups=len(present))

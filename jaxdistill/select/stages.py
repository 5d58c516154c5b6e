"""MoRSD's pure stages: the candidate pool, the accuracy and diversity filters and keep-k.

Functions of their inputs only (no model, no files), over `Candidates`: example id -> its
candidate rationales, in candidate order.
"""

from __future__ import annotations

import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxdistill.data import sources
from jaxdistill.data.examples import Example, Rationale

STRATEGIES = ("lowest", "highest", "random", "all")
DIVERSITY = ("ngram", "embedding", "none")
HUMAN = "human"  # teacher and prompt_id of human explanations taken in as candidates

Key = tuple  # (example_id, teacher, prompt_id, sample_index): the cache-row key
Candidates = dict[str, list[Rationale]]  # example_id -> its candidate rationales


def key_of(r: Rationale) -> Key:
  return (r.example_id, r.teacher, r.prompt_id, int(r.sample_index))


def count(cands: Mapping[str, Sequence[Rationale]]) -> int:
  return sum(len(rs) for rs in cands.values())


def human_candidates(ex: Example) -> list[Rationale]:
  """An example's human explanations as candidates (always correct: they explain the gold label)."""
  return [Rationale(example_id=ex.id, teacher=HUMAN, prompt_id=HUMAN, sample_index=j, rationale=h.strip(),
                    teacher_answer=ex.label, teacher_correct=True, raw="")
          for j, h in enumerate(ex.human_explanations) if h and h.strip()]


def candidates(dataset: sources.Dataset, include_human: bool = False) -> Candidates:
  """The train split's candidate rationales; dev/test are never selected."""
  out = {}
  for ex in dataset.splits["train"]:
    rs = [r for r in dataset.rationales.get(ex.id, ()) if r.rationale and r.rationale.strip()]
    out[ex.id] = rs + (human_candidates(ex) if include_human else [])
  return out


def accuracy_filter(cands: Mapping[str, Sequence[Rationale]]) -> Candidates:
  """Keeps rationales whose teacher answer is the gold label."""
  return {i: [r for r in rs if r.teacher_correct] for i, rs in cands.items()}


def ngrams(text: str, n: int) -> frozenset:
  """Lower-cased word n-grams; a text shorter than n words is one gram (so it still compares)."""
  words = tuple(w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split())
  if len(words) < n:
    return frozenset([words]) if words else frozenset()
  return frozenset(words[i:i + n] for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
  if not a and not b:
    return 1.0  # two empty texts are the same text
  return len(a & b) / len(a | b)


def diversity_filter(cands: Mapping[str, Sequence[Rationale]], mode: str = "ngram", threshold: float = 0.7,
                     *, ngram_n: int = 3, embed: Callable[[Sequence[str]], np.ndarray] | None = None
                     ) -> Candidates:
  """Per example, in candidate order, drops a rationale whose similarity to one already kept is
  above `threshold`. Greedy and order-stable, so the first of a group of duplicates survives.
  `embed` (mode "embedding") maps texts to unit vectors, e.g. `embed.Embedder().embed`."""
  if mode == "none":
    return {i: list(rs) for i, rs in cands.items()}
  if mode == "ngram":
    grams = {id(r): ngrams(r.rationale, ngram_n) for rs in cands.values() for r in rs}
    similarity = lambda a, b: jaccard(grams[id(a)], grams[id(b)])
  elif mode == "embedding":
    if embed is None:
      raise ValueError("diversity_filter(mode='embedding') needs `embed` (texts -> unit vectors)")
    flat = [r for rs in cands.values() for r in rs]
    vectors = np.asarray(embed([r.rationale for r in flat]), np.float32) if flat else np.zeros((0, 1))
    row = {id(r): vectors[i] for i, r in enumerate(flat)}
    similarity = lambda a, b: float(row[id(a)] @ row[id(b)])
  else:
    raise ValueError(f"config.select.diversity={mode!r}: expected one of {DIVERSITY}")
  out = {}
  for ex_id, rs in cands.items():
    kept: list[Rationale] = []
    for r in rs:
      if all(similarity(r, k) <= threshold for k in kept):
        kept.append(r)
    out[ex_id] = kept
  return out


def keep_k(cands: Mapping[str, Sequence[Rationale]], scores: Mapping[Key, Mapping[str, float]] | None,
           strategy: str, k: int, seed: int = 0) -> Candidates:
  """The k lowest-RD / highest-RD / random (seeded per example, so independent of the order of
  examples) rationales of each example, or all of them; ties in RD keep candidate order."""
  if strategy not in STRATEGIES:
    raise ValueError(f"config.select.strategy={strategy!r}: expected one of {STRATEGIES}")
  out = {}
  for ex_id, rs in cands.items():
    rs = list(rs)
    if strategy == "all":
      out[ex_id] = rs
    elif strategy == "random":
      rng = np.random.default_rng([int(seed), zlib.crc32(ex_id.encode())])
      pick = sorted(rng.choice(len(rs), size=min(k, len(rs)), replace=False).tolist()) if rs else []
      out[ex_id] = [rs[i] for i in pick]
    else:
      missing = [key_of(r) for r in rs if scores is None or key_of(r) not in scores]
      if missing:
        raise KeyError(f"strategy={strategy!r} needs RD scores; none for {missing[:3]}")
      sign = 1.0 if strategy == "lowest" else -1.0
      order = sorted(range(len(rs)), key=lambda i: (sign * scores[key_of(rs[i])]["rd"], i))
      out[ex_id] = [rs[i] for i in sorted(order[:k])]
  return out

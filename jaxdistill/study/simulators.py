"""Rationale faithfulness from simulators trained inside the study (report.py's "faithfulness" block).

A simulator learns to predict a run's own labels (not the gold ones) from some view of an example;
it is trained on the run's dev predictions and scored on its test predictions (both from the best
model, predictions.jsonl), so it never sees the examples it is scored on. Three views:
  input + rationale   sim_with
  input alone         sim_without
  rationale alone     leaked: the rationale by itself gives away the label
LAS (Hase et al. 2020) = the mean of (with - without) over the leaking and over the non-leaking
rationales, averaged (stats.leakage_adjusted_simulatability). Consistency is the share of test
examples whose rationale alone leads the simulator to the label the student predicted: how often the
answer a rationale argues for is the answer its student gave.

The simulator is a bag-of-words (hashed unigrams and bigrams) multinomial logistic regression fitted
by full-batch gradient descent: deterministic, seconds on a CPU, and blind to everything but words; a
stronger simulator (a fine-tuned LM, as in the paper) reads more and may find more leakage.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import sparse

from jaxdistill.study import stats

DIM = 1 << 14  # hashed feature buckets
_TOKEN = re.compile(r"[a-z0-9']+")


def featurize(texts: Sequence[str], dim: int = DIM) -> sparse.csr_matrix:
  """Hashed, L2-normalised unigram + bigram counts [n, dim] (crc32: the same on every run), sparse:
  a text fills a few dozen of the buckets, so the simulator's steps cost O(words), not O(dim)."""
  rows, cols = [], []
  for row, text in enumerate(texts):
    words = _TOKEN.findall(text.lower())
    for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
      rows.append(row)
      cols.append(zlib.crc32(gram.encode()) % dim)
  counts = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), dim))
  counts.sum_duplicates()
  norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
  return sparse.diags(1.0 / np.maximum(norms, 1e-8).astype(np.float32)) @ counts


class BowSimulator:
  """Multinomial logistic regression on `featurize`; classes are the labels seen in training."""

  def __init__(self, steps: int = 300, learning_rate: float = 2.0, l2: float = 1e-4):
    self.steps, self.learning_rate, self.l2 = steps, learning_rate, l2

  def fit(self, texts: Sequence[str], labels: Sequence[str]) -> "BowSimulator":
    self.classes = sorted(set(labels))
    x = featurize(texts)
    y = np.zeros((len(labels), len(self.classes)), np.float32)
    y[np.arange(len(labels)), [self.classes.index(l) for l in labels]] = 1.0
    xt = x.T.tocsr()
    self.w = np.zeros((x.shape[1], len(self.classes)), np.float32)
    self.b = np.log(y.mean(0) + 1e-6).astype(np.float32)  # start at the label prior
    for _ in range(self.steps):
      logits = x @ self.w + self.b
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      grad = (p - y) / len(labels)
      self.w -= self.learning_rate * (xt @ grad + self.l2 * self.w)
      self.b -= self.learning_rate * grad.sum(0)
    return self

  def predict(self, texts: Sequence[str]) -> list[str]:
    logits = featurize(texts) @ self.w + self.b
    return [self.classes[k] for k in np.argmax(logits, axis=1)]


def input_text(row: Mapping[str, Any]) -> str:
  return " ".join(f"{k}: {v}" for k, v in row["inputs"].items())


def faithfulness(train_rows: Sequence[Mapping[str, Any]], test_rows: Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any]:
  """LAS and consistency of one run: simulators fitted on `train_rows` (dev), scored on `test_rows`."""
  views = {"with": lambda r: input_text(r) + " rationale: " + r["rationale"], "without": input_text,
           "leaked": lambda r: r["rationale"]}
  targets = [r["predicted"] for r in train_rows]
  hits = {}
  for name, view in views.items():
    simulator = BowSimulator().fit([view(r) for r in train_rows], targets)
    guesses = simulator.predict([view(r) for r in test_rows])
    hits[name] = np.asarray([g == r["predicted"] for g, r in zip(guesses, test_rows)])
  las = stats.leakage_adjusted_simulatability(hits["with"], hits["without"], hits["leaked"])
  return {"las": las.las, "leaked_effect": las.leaked_effect, "nonleaked_effect": las.nonleaked_effect,
          "leaked": las.n_leaked, "not_leaked": las.n_nonleaked, "consistency": float(hits["leaked"].mean()),
          "simulated_with": float(hits["with"].mean()), "simulated_without": float(hits["without"].mean())}

"""Is a step right? Per kind: exact label, set equality of 1-based indices, normalised text."""

from __future__ import annotations

import re
import string

from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, KINDS, RETRIEVAL, Value, clean

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (the SQuAD / MS MARCO convention)."""
  return clean(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)))


def verify(kind: str, predicted: Value | None, gold: Value) -> bool:
  """Is `predicted` right for a step of `kind` whose gold value is `gold`? None is always wrong.

  classification: the same label (case and spacing aside); retrieval: the same *set* of
  indices (order carries no meaning); answer: the same normalised text."""
  if predicted is None:
    return False
  if kind == CLASSIFICATION:
    return clean(str(predicted)).lower() == clean(str(gold)).lower()
  if kind == RETRIEVAL:
    try:
      return set(predicted) == set(gold)
    except TypeError:
      return False
  if kind == ANSWER:
    return normalize_answer(predicted) == normalize_answer(gold)
  raise ValueError(f"unknown step kind {kind!r} (expected one of {KINDS})")

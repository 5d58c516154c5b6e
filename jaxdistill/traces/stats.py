"""Trace x answer statistics: the 2x2 table, P(answer ok | trace ok / wrong), phi, per-step accuracy."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

TABLE_KEYS = ("trace_ok_answer_ok", "trace_ok_answer_wrong", "trace_wrong_answer_ok", "trace_wrong_answer_wrong")


def contingency(trace_ok: Iterable[bool], answer_ok: Iterable[bool]) -> dict[str, int]:
  """The 2x2 table of trace-correct x answer-correct counts (keys TABLE_KEYS: a, b, c, d)."""
  pairs = list(zip(trace_ok, answer_ok, strict=True))
  table = dict.fromkeys(TABLE_KEYS, 0)
  for t, a in pairs:
    table[f"trace_{'ok' if t else 'wrong'}_answer_{'ok' if a else 'wrong'}"] += 1
  return table


def p_answer_given_trace(table: Mapping[str, int], trace_ok: bool = True) -> float | None:
  """P(answer correct | trace correct) (or | trace wrong); None when no trace is of that kind
  (an empty row: the probability is undefined, not 0)."""
  row = "ok" if trace_ok else "wrong"
  right, wrong = table[f"trace_{row}_answer_ok"], table[f"trace_{row}_answer_wrong"]
  return right / (right + wrong) if right + wrong else None


def phi(table: Mapping[str, int]) -> float | None:
  """The phi coefficient (Pearson correlation of the two binary variables):
  (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d)). None when a margin is empty (every trace right, every
  trace wrong, every answer right or every answer wrong): one variable is then constant and a
  correlation is undefined; reporting 0 would claim "no association" where nothing was measured."""
  a, b, c, d = (table[k] for k in TABLE_KEYS)
  denominator = (a + b) * (c + d) * (a + c) * (b + d)
  return (a * d - b * c) / math.sqrt(denominator) if denominator else None


def step_accuracy(checks: Sequence[Mapping[str, bool]], names: Sequence[str]) -> dict[str, float | None]:
  """Per step, the fraction of examples whose step was right (None for no examples)."""
  return {n: (sum(c[n] for c in checks) / len(checks) if checks else None) for n in names}


def correlation_block(trace_ok: Sequence[bool], answer_ok: Sequence[bool]) -> dict[str, Any]:
  table = contingency(trace_ok, answer_ok)
  return {"contingency": table,
          "p_answer_given_trace_ok": p_answer_given_trace(table, True),
          "p_answer_given_trace_wrong": p_answer_given_trace(table, False),
          "phi": phi(table)}

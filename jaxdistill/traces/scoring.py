"""The "traces" block of an evaluation: generated text checked step by step against gold steps."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

from jaxdistill.data.examples import Example
from jaxdistill.traces.decomposers import Decomposer
from jaxdistill.traces.stats import correlation_block, step_accuracy
from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, Step, format_trace
from jaxdistill.traces.verify import verify


def score(decomposer: Decomposer, examples: Sequence[Example], generated: Sequence[str],
          predictions: Sequence[str], golds: Mapping[str, list[Step] | None], samples: int = 5
          ) -> dict[str, Any]:
  """The trace block of one evaluation: per-step and trace accuracy, the trace x answer table,
  P(answer ok | trace ok / wrong), phi, the same per gold class, and a few samples to read.

  A trace is correct when every non-answer step verifies. The answer step is the Evaluator's
  reading of the answer (`predictions`), verified on normalised text; examples without gold
  steps are counted and left out."""
  names = [name for name, _ in decomposer.specs]
  kinds = dict(decomposer.specs)
  checks, trace_ok, answer_ok, classes, shown = [], [], [], [], []
  no_gold = malformed = 0
  class_name = next((n for n, k in decomposer.specs if k == CLASSIFICATION), None)
  for ex, text, prediction in zip(examples, generated, predictions, strict=True):
    gold = golds.get(ex.id)
    if gold is None:
      no_gold += 1
      continue
    values = decomposer.parse(text)
    values[decomposer.answer_name] = prediction.strip() or None  # no answer read: unreadable, like a bad field
    malformed += any(values[n] is None for n in names)
    check = {s.name: verify(s.kind, values[s.name], s.value) for s in gold}
    checks.append(check)
    trace_ok.append(all(check[n] for n in names if kinds[n] != ANSWER))
    answer_ok.append(check[decomposer.answer_name])
    classes.append(next((s.value for s in gold if s.name == class_name), ""))
    if len(shown) < samples:
      shown.append({"id": ex.id, "generated": text, "gold": format_trace(gold)})
  n = len(checks)
  block: dict[str, Any] = {
      "examples": n,
      "no_gold": no_gold,
      "answer_accuracy": sum(answer_ok) / n if n else None,
      "trace_accuracy": sum(trace_ok) / n if n else None,
      "malformed": malformed / n if n else None,  # some step unreadable (missing, repeated, bad value)
      "step_accuracy": step_accuracy(checks, names),
      **correlation_block(trace_ok, answer_ok),
  }
  by_class = collections.defaultdict(list)
  for c, t, a in zip(classes, trace_ok, answer_ok):
    by_class[c].append((t, a))
  block["by_class"] = {c: {"examples": len(v), "answer_accuracy": sum(a for _, a in v) / len(v),
                           "trace_accuracy": sum(t for t, _ in v) / len(v)} for c, v in sorted(by_class.items())}
  block["samples"] = shown
  return block


@dataclasses.dataclass
class Scorer:
  """What the Evaluator calls: (examples, generated texts, predicted answers) -> trace block."""
  decomposer: Decomposer
  golds: dict[str, list[Step] | None]
  training: dict[str, Any]

  def __call__(self, examples: Sequence[Example], generated: Sequence[str], predictions: Sequence[str]
               ) -> dict[str, Any]:
    block = score(self.decomposer, examples, generated, predictions, self.golds)
    block["training"] = self.training
    return block

"""Per task, the rule that yields an example's gold steps, and the registry the data sources fill.

A task's source module (data/sources/babi.py, cotemp.py, msmarco.py) defines its Decomposer next
to the data it understands and registers it on import. The registry only goes one way: sources
import this module, nothing here imports a source, so loading the data (sources.load_dataset)
is what makes a task's decomposer known.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from jaxdistill.data.examples import Example, Rationale
from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, RETRIEVAL, Step, Value, format_trace, parse_trace

TEACHER = "rule"  # gold traces travel as rationales of this teacher, prompt_id "<task>-trace"


class Decomposer:
  """A task's decomposition: its steps, their gold values, and what a wrong value may be.

  Subclasses set `task`, `specs` ((name, kind) in trace order, one answer step last) and
  `classes` (the classification step's label set) and implement `num_items` (how many facts or
  passages an example offers the retrieval step). `gold` reads the example's rule trace (the
  source wrote it from annotations the example's text does not carry, e.g. MS MARCO's
  is_selected); a decomposer that can recompute it from the text alone (bAbI) overrides it.
  """

  task: str = ""
  specs: tuple[tuple[str, str], ...] = ()
  classes: tuple[str, ...] = ()

  @property
  def prompt_id(self) -> str:
    return f"{self.task}-trace"

  def num_items(self, example: Example) -> int:
    raise NotImplementedError

  def parse(self, text: Any) -> dict[str, Value | None]:
    return parse_trace(text, self.specs)

  def steps(self, values: Mapping[str, Value]) -> list[Step]:
    return [Step(name, kind, values[name]) for name, kind in self.specs]

  def gold(self, example: Example, rationales: Sequence[Rationale] = ()) -> list[Step] | None:
    """The example's gold steps from its rule trace (None when it has none or it is unreadable)."""
    for r in rationales:
      if r.teacher == TEACHER and r.prompt_id == self.prompt_id:
        values = self.parse(r.rationale)
        values[self.answer_name] = example.label
        if any(v is None for v in values.values()):
          return None
        return self.steps(values)
    return None

  @property
  def answer_name(self) -> str:
    return next(name for name, kind in self.specs if kind == ANSWER)

  def step_names(self, which: str) -> list[str]:
    """Non-answer steps named by `which`: a step name, a kind, or "any" (all of them)."""
    names = [name for name, kind in self.specs if kind != ANSWER and which in ("any", name, kind)]
    if not names:
      known = ["any"] + [n for n, k in self.specs if k != ANSWER] + sorted(
          {k for _, k in self.specs if k != ANSWER})
      raise ValueError(f"config.traces.corrupt_step={which!r}: not a non-answer step of task {self.task!r} "
                       f"(expected one of {known}; the answer stays gold by design)")
    return names

  def wrong_value(self, example: Example, step: Step, rng: random.Random) -> Value | None:
    """A plausible wrong value for `step`: another label of the classification step; for the
    retrieval step a near miss (one gold index swapped for another item of the same example, so
    the set keeps its size and stays valid). None when no wrong value exists."""
    if step.kind == CLASSIFICATION:
      others = [c for c in self.classes if c != step.value]
      return rng.choice(others) if others else None
    if step.kind == RETRIEVAL:
      gold = set(step.value)
      pool = [i for i in range(1, self.num_items(example) + 1) if i not in gold]
      if not gold:
        return (rng.choice(pool),) if pool else None
      if not pool:
        return tuple(sorted(gold - {rng.choice(sorted(gold))})) if len(gold) > 1 else None
      out = set(gold)
      out.remove(rng.choice(sorted(gold)))
      out.add(rng.choice(pool))
      return tuple(sorted(out))
    raise ValueError(f"step {step.name!r} of kind {step.kind!r} is not corrupted (the answer stays gold)")


def trace_rationale(example: Example, steps: Sequence[Step], prompt_id: str, sample_index: int = 0
                    ) -> Rationale:
  """A trace as a teacher rationale: the trace without its answer, then the answer after the marker."""
  return Rationale(example_id=example.id, teacher=TEACHER, prompt_id=prompt_id, sample_index=sample_index,
                   rationale=format_trace([s for s in steps if s.kind != ANSWER]),
                   teacher_answer=example.label, teacher_correct=True, raw=format_trace(steps))


DECOMPOSERS: dict[str, Decomposer] = {}  # task -> its decomposer, filled by the source modules


def register(decomposer: Decomposer) -> Decomposer:
  """Makes `decomposer` the one of its task (a source module calls this on import); returns it."""
  if not decomposer.task:
    raise ValueError(f"{type(decomposer).__name__} has no task")
  DECOMPOSERS[decomposer.task] = decomposer
  return decomposer


def decomposer_for(task: str) -> Decomposer:
  if task not in DECOMPOSERS:
    raise ValueError(f"no trace decomposer for task {task!r} (registered: {sorted(DECOMPOSERS)}); a task's "
                     f"data source registers it when loaded (sources.load_dataset)")
  return DECOMPOSERS[task]

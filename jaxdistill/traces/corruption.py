"""The study's manipulation: one non-answer step made plausibly wrong, the answer kept gold, so
the trace is wrong while the label target is right."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from jaxdistill.data.examples import Example
from jaxdistill.traces.decomposers import Decomposer
from jaxdistill.traces.steps import Step


def corrupt(decomposer: Decomposer, example: Example, steps: Sequence[Step], which: str,
            rng: random.Random) -> list[Step] | None:
  """`steps` with one non-answer step (named by `which`: a name, a kind or "any", then drawn)
  given a plausible wrong value (Decomposer.wrong_value); every other step, the answer included,
  unchanged. None when the drawn step has no wrong value."""
  name = rng.choice(decomposer.step_names(which))
  out = list(steps)
  for i, s in enumerate(out):
    if s.name == name:
      value = decomposer.wrong_value(example, s, rng)
      if value is None:
        return None
      out[i] = dataclasses.replace(s, value=value)
      return out
  return None

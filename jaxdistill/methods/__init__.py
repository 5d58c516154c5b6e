"""Methods: what a way of training adds to a run, through one seam (base.py: the Method protocol).

  pst.py     Post-Semantic-Thinking's rationale loss in the hidden semantic space
  traces.py  trace-based distillation: the variant's training traces, traces scored at evaluation
  kd.py      teacher-logit distillation: top-k KL to the teacher's cached logprobs

A new method is one module here plus one line in METHODS; the training loop, the pipeline and the
Evaluator call the hooks of whichever methods `from_config` enables, in this order.
"""

from __future__ import annotations

from jaxdistill.methods import kd, pst, traces
from jaxdistill.methods.base import Method

METHODS: tuple[type[Method], ...] = (pst.PST, traces.Traces, kd.KD)


def from_config(config) -> list[Method]:
  """The methods `config` enables (each checks its own keys), in METHODS order."""
  return [m for m in (cls.from_config(config) for cls in METHODS) if m is not None]

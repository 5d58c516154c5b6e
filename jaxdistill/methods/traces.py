"""Trace-based distillation as a method (jaxdistill/traces/): enabled by a `config.traces` section.

The dataset's training rationales become the variant's traces (correct, incorrect or mixed; dev and
test keep their gold traces), and every evaluation scores the generated traces step by step against
the gold ones: per-step accuracy, the trace x answer table and phi, reported under "traces".
"""

from __future__ import annotations

from jaxdistill import traces
from jaxdistill.methods.base import Method


class Traces(Method):
  name = "traces"
  wants_generated_text = True  # the scorer reads the whole trace, not only the parsed answer

  def __init__(self, config):
    self.config = config
    self.scorer: traces.Scorer | None = None

  @classmethod
  def from_config(cls, config) -> "Traces | None":
    return cls(config) if config.get("traces") is not None else None

  def prepare_dataset(self, dataset):
    dataset, self.scorer = traces.setup(self.config, dataset)
    return dataset

  def eval_metrics(self, examples, generated, predictions):
    return {"traces": self.scorer(examples, generated, predictions)}

  def result(self, test_metrics):
    return {"traces": test_metrics["traces"]} if "traces" in test_metrics else {}

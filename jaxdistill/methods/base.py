"""The Method protocol: what a way of training adds to the core run, and nothing the core knows about.

A run is the objective (objectives/losses.py: label and rationale terms of the setting) plus the
methods its config enables (methods/__init__.py: METHODS). `train.setup`, the pipeline and the
Evaluator call only these hooks, in this order; every default does nothing:

  prepare_dataset   the loaded Dataset -> the one trained and evaluated (training and evaluation)
  start             training only, after the tokenizer: build host-side tables, refuse what cannot work
  wrap_student      training only: the student inside a `TrainingWrapper` holding training-only modules
  token_features    per-target-token int features the pipeline tokenizes and packs with the targets
  batch_view        host-side batch features, after the student kind's view (numpy, picklable)
  loss_terms        weighted terms added after the objective's
  eval_metrics      a block merged into every evaluation's metrics (generated text on request)
  result            what the method adds to metrics.json, from the test metrics

A method keeps its config keys to itself: `from_config(config)` returns None when the config does
not enable it, and checks its own keys when it does.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxdistill.data.pipeline import TokenFeature  # (record, target ids, task ids) -> int32 per target token
from jaxdistill.objectives.losses import WeightedTerm

BatchView = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Method:
  """Base class with do-nothing hooks; a method overrides what it needs."""

  name = "method"
  wants_generated_text = False  # eval_metrics reads the whole generated text (e.g. a trace)

  @classmethod
  def from_config(cls, config) -> "Method | None":
    raise NotImplementedError

  def prepare_dataset(self, dataset):
    return dataset

  def start(self, config, dataset, tokenizer, workdir: str, is_chief: bool) -> None:
    del config, dataset, tokenizer, workdir, is_chief

  def wrap_student(self, model, spec, rngs):
    del spec, rngs
    return model

  def token_features(self) -> Mapping[str, TokenFeature]:
    return {}

  def batch_view(self) -> BatchView | None:
    return None

  def loss_terms(self, kind: str) -> list[WeightedTerm]:
    del kind
    return []

  def eval_metrics(self, examples: Sequence[Any], generated: Sequence[str] | None,
                   predictions: Sequence[str]) -> dict[str, Any]:
    del examples, generated, predictions
    return {}

  def result(self, test_metrics: Mapping[str, Any]) -> dict[str, Any]:
    del test_metrics
    return {}


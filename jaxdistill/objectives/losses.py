"""Loss terms and objectives.

A loss term is a pure function `(model_outputs, batch) -> (scalar, metrics)`. An objective is a
weighted list of terms; the Distilling Step-by-Step multi-task loss is
`alpha * label_xent + (1 - alpha) * rationale_xent`, where each term averages the token
cross-entropy over the target tokens of its own task (so the two tasks are balanced however
many tokens each has). `objective.rationale_loss` = token | semantic | both says whether the
rationale's token cross-entropy is among them; the semantic rationale term is a method's
(methods/pst.py, weighted (1 - alpha) * objective.semantic.weight), added after these.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.data.formats import LABEL, RATIONALE
from jaxdistill.data.sources import cfg_get

Outputs = Mapping[str, jax.Array]
Batch = Mapping[str, jax.Array]
LossTerm = Callable[[Outputs, Batch], tuple[jax.Array, dict[str, jax.Array]]]
RATIONALE_LOSSES = ("token", "semantic", "both")


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token cross-entropy in float32, [B, L]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit


def _task_xent(task_id: int, name: str) -> LossTerm:
  def term(outputs: Outputs, batch: Batch):
    weights = batch["decoder_loss_weights"] * (batch["decoder_task_ids"] == task_id)
    xent = token_cross_entropy(outputs["logits"], batch["decoder_target_ids"])
    denom = jnp.maximum(weights.sum(), 1e-8)
    loss = (xent * weights).sum() / denom
    return loss, {f"{name}_loss": loss, f"{name}_tokens": weights.sum()}
  term.__name__ = name
  return term


label_xent = _task_xent(LABEL, "label")
rationale_xent = _task_xent(RATIONALE, "rationale")


def label_class_xent(outputs: Outputs, batch: Batch):
  """Classification-head cross-entropy over the label records (encoder students):
  `encoder_labels` holds 1 + the class index at each label record's first token."""
  labels = batch["encoder_labels"]
  weights = (labels > 0).astype(jnp.float32)
  logits = outputs["class_logits"]
  targets = jnp.maximum(labels - 1, 0)
  denom = jnp.maximum(weights.sum(), 1e-8)
  loss = (token_cross_entropy(logits, targets) * weights).sum() / denom
  accuracy = ((jnp.argmax(logits, -1) == targets) * weights).sum() / denom
  return loss, {"label_loss": loss, "label_accuracy": accuracy, "label_records": weights.sum()}


TERMS: dict[str, LossTerm] = {"label_xent": label_xent, "rationale_xent": rationale_xent,
                              "label_class_xent": label_class_xent}


class WeightedTerm(NamedTuple):
  name: str
  weight: float
  fn: LossTerm


def objective_terms(objective, student_kind: str = "seq2seq") -> list[WeightedTerm]:
  """The weighted loss terms of a setting (config.objective) for a kind of student: encoder
  students learn the label with their classification head, the others generate it."""
  label = (WeightedTerm("label_class_xent", 1.0, label_class_xent) if student_kind == "encoder"
           else WeightedTerm("label_xent", 1.0, label_xent))
  if objective.name == "baseline":
    return [label]
  if objective.name in ("human", "cot", "hybrid"):
    alpha = float(objective.alpha)
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"config.objective.alpha must be in [0, 1], got {alpha}")
    terms = [label._replace(weight=alpha)]
    rationale_loss = cfg_get(objective, "rationale_loss", "token")
    if rationale_loss not in RATIONALE_LOSSES:
      raise ValueError(f"config.objective.rationale_loss={rationale_loss!r}: expected one of "
                       f"{RATIONALE_LOSSES}")
    if rationale_loss in ("token", "both"):
      terms.append(WeightedTerm("rationale_xent", 1.0 - alpha, rationale_xent))
    return terms
  raise ValueError(f"config.objective.name: unknown objective {objective.name!r} "
                   "(expected baseline | human | cot | hybrid)")


def total_loss(terms: list[WeightedTerm], outputs: Outputs, batch: Batch):
  loss = jnp.zeros((), jnp.float32)
  metrics: dict[str, jax.Array] = {}
  for term in terms:
    value, term_metrics = term.fn(outputs, batch)
    loss = loss + term.weight * value
    metrics.update(term_metrics)
  metrics["loss"] = loss
  return loss, metrics

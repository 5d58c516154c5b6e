"""Post-Semantic-Thinking as a method: the rationale loss in the hidden semantic space.

Enabled by `config.objective.rationale_loss` = semantic | both (with a rationale objective). The
answer-first target is the objective's format (`objective.format="answer_rationale"`); what this
method adds is objectives/semantic.py's machinery: frozen-encoder embeddings of the training
rationales (embedded once per run into WORKDIR/semantic_targets.npz, or read from a cache
embedded by `python -m jaxdistill.cache embed`), a projection of the student's pooled rationale
states trained beside it, and the cosine / MSE term weighted (1 - alpha) * objective.semantic.weight.
"""

from __future__ import annotations

import os

from absl import logging

from jaxdistill.methods.base import Method
from jaxdistill.models import students
from jaxdistill.objectives import semantic
from jaxdistill.objectives.losses import WeightedTerm


class PST(Method):
  name = "pst"

  def __init__(self, objective, cache_dir: str = ""):
    self.objective, self.cache_dir = objective, cache_dir
    self.targets: semantic.SemanticTargets | None = None

  @classmethod
  def from_config(cls, config) -> "PST | None":
    if not semantic.enabled(config.objective):
      return None
    semantic.rationale_semantic(config.objective.semantic.distance)  # a bad distance fails before any work
    return cls(config.objective, config.data.cache_dir)

  def start(self, config, dataset, tokenizer, workdir: str, is_chief: bool) -> None:
    del config, tokenizer
    sem = self.objective.semantic
    self.targets = semantic.build_targets(
        semantic.rationale_texts(dataset.splits["train"], dataset.rationales, self.objective.name), sem.encoder,
        known=semantic.cache_embeddings(self.cache_dir, sem.encoder),
        save_path=os.path.join(workdir, "semantic_targets.npz") if is_chief else None,
        batch_size=int(sem.batch_size))
    logging.info("semantic targets: %d rationale texts, %d dimensions, from %s", len(self.targets.index),
                 self.targets.dim, sem.encoder)

  def wrap_student(self, model, spec, rngs):
    return semantic.SemanticStudent(model, students.decoder_hidden_size(spec), self.targets.dim, rngs=rngs)

  def token_features(self):
    return {semantic.IDS_KEY: self.targets.token_feature()}

  def batch_view(self):
    return self.targets.view

  def loss_terms(self, kind: str) -> list[WeightedTerm]:
    del kind
    sem = self.objective.semantic
    return [WeightedTerm("rationale_semantic", (1.0 - float(self.objective.alpha)) * float(sem.weight),
                         semantic.rationale_semantic(sem.distance))]

  def result(self, test_metrics):
    del test_metrics
    return {"rationale_loss": self.objective.rationale_loss}

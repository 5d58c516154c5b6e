"""Evaluation: label accuracy, rationale perplexity from teacher forcing.

Labels come from greedy decoding (seq2seq and decoder-only students: the generated text must
equal the label) or from the classification head (encoder students: argmax over the label set);
what differs by student kind is kinds.py's.

Every host holds the whole (small) eval split, builds the same padded batches and places its
part of each global batch; results are gathered back, so single- and multi-host runs agree.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxdistill import kinds, partitioning
from jaxdistill.data import formats, pipeline
from jaxdistill.objectives import losses


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Places a batch that every host holds in full as one array sharded over the batch axes."""
  sharding = partitioning.batch_sharding(mesh)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@nnx.jit
def _rationale_nll(model, batch):
  """Sum of rationale-token negative log-likelihood and the token count of one batch."""
  logits = model(batch)["logits"]
  xent = losses.token_cross_entropy(logits, batch["decoder_target_ids"])
  weights = (batch["decoder_loss_weights"] > 0) * (batch["decoder_task_ids"] == formats.RATIONALE)
  return (xent * weights).sum(), weights.sum()


class Evaluator:
  """Holds the prepared dev/test batches; `evaluate(model, split)` returns a metrics dict."""

  def __init__(self, config, dataset, tokenizer, mesh, kind: str = "seq2seq", methods: Sequence[Any] = ()):
    self.tokenizer, self.mesh, self.kind, self.labels = tokenizer, mesh, kind, dataset.labels
    # Forward passes and decoding keep their activations split over the batch axes, as training does.
    self.activation_sharding = lambda: partitioning.activation_sharding(mesh, config.logical_axis_rules)
    self.adapter = kinds.of(kind)
    # Methods (methods/base.py) whose eval_metrics add a block to every evaluation.
    self.methods = tuple(methods)
    self.format = config.objective.get("format", "multitask")
    self.max_label_len = int(config.eval.max_label_len)
    # Tokens to generate before the answer can be read: the whole chain of thought for
    # rationale_answer; the answer and the start of the explanation marker for answer_rationale.
    self.max_new_tokens = {"multitask": self.max_label_len,
                           "answer_rationale": self.max_label_len + len(tokenizer.encode(formats.EXPLANATION_MARK)),
                           "rationale_answer": int(config.data.max_target_len) + self.max_label_len
                           }[self.format]
    # Answer first: what decoding the whole target (answer, marker, rationale) would take instead.
    self.full_new_tokens = self.max_new_tokens + int(config.data.max_target_len)
    self.perplexity = bool(config.eval.rationale_perplexity)
    self.max_rationale_len = int(config.data.max_target_len)
    self.max_source_len, self.batch_size = int(config.data.max_source_len), int(config.eval.batch_size)
    self._rationale_inputs: dict[str, list] = {}
    batch_size = int(config.eval.batch_size)
    limit = int(config.data.max_eval_examples)
    self.examples, self.label_batches, self.rationale_batches = {}, {}, {}
    view = self.adapter.batch_view(tokenizer)
    for split in ("dev", "test"):
      examples = list(dataset.splits.get(split, []))
      if limit >= 0:
        examples = examples[:limit]
      self.examples[split] = examples
      label_records = [formats.label_record(ex, dataset.labels, fmt=self.format) for ex in examples]
      self.label_batches[split] = [
          (self.adapter.label_inputs(batch, tokenizer), indices) for batch, indices in pipeline.make_eval_batches(
              label_records, tokenizer, batch_size, config.data.max_source_len, self.max_label_len)]
      rng = np.random.default_rng(config.data.seed)
      rationale_records = [
          r for ex in examples
          for r in formats.records_for_example(ex, dataset.rationales.get(ex.id, []), config.objective,
                                               dataset.labels, rng)
          if r.has_rationale]
      # Built once, in the layout the student reads (decoder students: causal LM rows).
      self.rationale_batches[split] = [
          (view(batch) if view else batch, indices) for batch, indices in pipeline.make_eval_batches(
              rationale_records, tokenizer, batch_size, config.data.max_source_len, config.data.max_target_len)
      ] if rationale_records and self.perplexity else []

  def predict_labels(self, model, split: str, max_new_tokens: int | None = None, raw: bool = False) -> list[str]:
    """Predicted label strings of `split`; `max_new_tokens` overrides the decoding budget; `raw`
    returns the whole generated text (e.g. a chain of thought and its answer) instead of the parsed answer."""
    max_new_tokens = max_new_tokens or self.max_new_tokens
    predictions: list[str] = [""] * len(self.examples[split])
    for inputs, indices in self.label_batches[split]:
      with self.activation_sharding():
        texts = self.adapter.predict_texts(model, to_global(inputs, self.mesh), max_new_tokens=max_new_tokens,
                                           tokenizer=self.tokenizer, labels=self.labels, to_host=to_host)
      if self.adapter.generates and not raw:
        texts = [formats.parse_answer(t, self.format) for t in texts]
      for row, index in enumerate(indices):
        if index >= 0:
          predictions[index] = texts[row]
    return predictions

  def rationales(self, model, split: str) -> list[str]:
    """The student's own rationale for each example of `split`: read from its full generated target
    in the combined formats, generated from the rationale prompt in the multitask format (encoder
    students through their explanation decoder)."""
    if self.format != "multitask":
      budget = self.full_new_tokens if self.format == "answer_rationale" else self.max_new_tokens
      return [formats.parse_rationale(t, self.format) for t in self.predict_labels(model, split, budget, raw=True)]
    if split not in self._rationale_inputs:
      records = [formats.Seq2SeqRecord(formats.rationale_prompt(ex), "", formats.RATIONALE, 1.0, ex.id)
                 for ex in self.examples[split]]
      self._rationale_inputs[split] = [
          (self.adapter.label_inputs(batch, self.tokenizer), indices) for batch, indices in pipeline.make_eval_batches(
              records, self.tokenizer, self.batch_size, self.max_source_len, 1)]
    texts: list[str] = [""] * len(self.examples[split])
    for inputs, indices in self._rationale_inputs[split]:
      with self.activation_sharding():
        out = self.adapter.generate_texts(model, to_global(inputs, self.mesh), max_new_tokens=self.max_rationale_len,
                                          tokenizer=self.tokenizer, to_host=to_host)
      for row, index in enumerate(indices):
        if index >= 0:
          texts[index] = out[row].strip()
    return texts

  def add_rationales(self, model, rows: list[dict[str, Any]]) -> None:
    """Sets each prediction row's "rationale" (rows from `evaluate(..., rows=)`) to the student's own."""
    for split in dict.fromkeys(r["split"] for r in rows):
      texts = dict(zip((ex.id for ex in self.examples[split]), self.rationales(model, split)))
      for r in rows:
        if r["split"] == split:
          r["rationale"] = texts[r["id"]]

  def measure_decode(self, model, split: str, repeats: int = 3) -> dict[str, Any]:
    """Wall time of label prediction on `split`, warm (each budget runs once to compile first),
    the fastest of `repeats` passes (other processes on the machine only ever add time).

    "answer_seconds" is what evaluation does (answer_rationale: stop after the answer). For
    answer_rationale, "full_seconds" decodes the answer and the whole rationale, the work a
    rationale-first student does before its answer exists, and "speedup" is their ratio; the
    accuracies of both are reported so the early stop is seen to lose nothing."""
    if not self.adapter.generates:
      return {}
    if not self.examples[split]:
      raise ValueError(f"no {split} examples to time decoding on")
    budgets = {"answer": self.max_new_tokens}
    if self.format == "answer_rationale":
      budgets["full"] = self.full_new_tokens
    out: dict[str, Any] = {"examples": len(self.examples[split])}
    for name, budget in budgets.items():
      predictions = self.predict_labels(model, split, budget)  # compile
      seconds = []
      for _ in range(repeats):
        start = time.perf_counter()
        self.predict_labels(model, split, budget)
        seconds.append(time.perf_counter() - start)
      out[f"{name}_seconds"] = min(seconds)
      out[f"{name}_max_new_tokens"] = budget
      out[f"{name}_accuracy"] = sum(p == ex.label for p, ex in zip(predictions, self.examples[split])) / len(
          predictions)
    if "full_seconds" in out:
      out["speedup"] = out["full_seconds"] / max(out["answer_seconds"], 1e-9)
    return out

  def evaluate(self, model, split: str, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics of `model` on `split`; with `rows` (a list), also one row per example appended to it:
    id, gold, predicted, correct, the inputs and, for generating students, the generated text (and the
    rationale in it, rationale-first targets; add_rationales writes the others')."""
    examples = self.examples[split]
    if not examples:  # a score on nothing would read as a real 0 (or 1)
      raise ValueError(f"no {split} examples to evaluate")
    wants_text = any(m.wants_generated_text for m in self.methods) or (rows is not None and self.adapter.generates)
    generated = self.predict_labels(model, split, raw=True) if wants_text else None
    predictions = ([formats.parse_answer(t, self.format) for t in generated] if generated is not None
                   else self.predict_labels(model, split))
    correct = sum(p == ex.label for p, ex in zip(predictions, examples))
    metrics: dict[str, Any] = {"accuracy": correct / len(examples), "examples": len(examples)}
    if rows is not None:
      for i, (ex, predicted) in enumerate(zip(examples, predictions)):
        rows.append({"split": split, "id": ex.id, "gold": ex.label, "predicted": predicted,
                     "correct": predicted == ex.label, "inputs": dict(ex.inputs),
                     **({"generated": generated[i]} if generated is not None else {})})
        if generated is not None and self.format == "rationale_answer":  # the rationale is in the evaluated text
          rows[-1]["rationale"] = formats.parse_rationale(generated[i], self.format)
    if self.rationale_batches[split]:
      nll, count = 0.0, 0.0
      for batch, _ in self.rationale_batches[split]:
        with self.activation_sharding():
          batch_nll, batch_count = _rationale_nll(model, to_global(batch, self.mesh))
        nll, count = nll + float(batch_nll), count + float(batch_count)
      metrics["rationale_perplexity"] = math.exp(nll / max(count, 1.0))
    for method in self.methods:
      metrics.update(method.eval_metrics(examples, generated, predictions))
    return metrics

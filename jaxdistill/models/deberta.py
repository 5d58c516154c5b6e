"""DeBERTa-v2 / DeBERTa-v3 encoder in Flax NNX (transformers' `DebertaV2Model`).

Architecture notes (as in HF, so pretrained checkpoints load unchanged):
- Embeddings: words (+ absolute positions when `position_biased_input`, + token types when
  `type_vocab_size > 0`), an optional `embedding_size -> hidden_size` projection, LayerNorm,
  then zeroed at padding.
- Post-LN layers: x = LN(x + attn(x)); x = LN(x + W2 act(W1 x)).
- Disentangled attention: scores = (q.k + c2p + p2c) / sqrt(head_dim * (1 + #pos_att_type)),
  with one relative-embedding table [2 * span, hidden] owned by the encoder (optionally
  LayerNorm-ed, `norm_rel_ebd`), projected per layer by the content projections
  (`share_att_key`) or by separate `pos_key` / `pos_query` ones:
      c2p[q, k] = q_q . pos_key[idx(q, k)]      p2c[q, k] = k_k . pos_query[idx(q, k)]
  idx(q, k) = clip(bucket(pos_q - pos_k) + span, 0, 2 span - 1), bucket = HF's
  `make_log_bucket_position` (log-spaced beyond +-position_buckets/2) when position_buckets > 0.
  (HF writes p2c with -bucket(pos_k - pos_q); the bucketing is odd, so it is the same index.)
  Relative positions come from the `positions` input, so packed rows equal separate rows.
- The v2 ConvLayer (`conv_kernel_size`) is not implemented (DeBERTa-v3 has none).

Parameter layout and logical axes:
    embeddings.word / position / token_type  [vocab|length|types, E]  ("vocab"|"length"|None, "embed")
    embeddings.proj (E != hidden)            [E, hidden]             (None, "embed")
    encoder.rel_embeddings                   [2 span, hidden]        ("relpos_buckets", "embed")
    attention q / k / v / pos_q / pos_k      [hidden, heads, head_dim] ("embed", "heads", "kv")
      their biases                           [heads, head_dim]       ("heads", "kv")
    attention o                              [heads, head_dim, hidden] ("heads", "kv", "embed")
    ffn wi / wo                              [hidden, mlp] / [mlp, hidden]
    LayerNorm scale / bias, o / wo biases    [hidden]                ("embed",)
`config.scan_layers` stacks the layers (their parameters get a leading "layers" axis) and runs them
with jax.lax.scan; `config.remat` rematerialises each layer in the backward pass (models/stack.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.models import common, hf, stack

Array = jax.Array
DType = Any

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}
_POS_ATT_TYPES = ("c2p", "p2c")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
  """Shapes and numerics of a DeBERTa-v2/v3 encoder (HF field names). Defaults: v3-base."""

  vocab_size: int = 128100
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-7
  relative_attention: bool = True
  max_relative_positions: int = -1  # < 1: max_position_embeddings
  position_buckets: int = 256  # <= 0: no log buckets
  pos_att_type: tuple[str, ...] = ("p2c", "c2p")
  share_att_key: bool = True
  norm_rel_ebd: str = "layer_norm"  # "none" or "layer_norm"
  position_biased_input: bool = False
  pad_token_id: int = 0
  embedding_size: int | None = None  # None: hidden_size
  dtype: DType = jnp.float32  # activations; softmax / norm statistics in float32
  param_dtype: DType = jnp.float32
  remat: str = "none"  # per-layer rematerialisation: none | full | dots (models/stack.py)
  scan_layers: bool = False  # the layers stacked and run by jax.lax.scan (models/stack.py)

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    stack.check_remat(self.remat)
    pos = self.pos_att_type
    if isinstance(pos, str):  # HF's legacy "p2c|c2p"
      pos = [p.strip() for p in pos.lower().split("|") if p.strip()]
    pos = tuple(pos or ())
    object.__setattr__(self, "pos_att_type", pos)
    if not set(pos) <= set(_POS_ATT_TYPES):
      raise ValueError(f"pos_att_type {pos} not supported; use a subset of {_POS_ATT_TYPES}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    norms = {n.strip() for n in self.norm_rel_ebd.lower().split("|")}
    if not norms <= {"none", "layer_norm"}:
      raise ValueError(f"unsupported norm_rel_ebd {self.norm_rel_ebd!r}")
    if self.relative_attention and self.position_buckets > 0:
      mid = self.position_buckets // 2
      if mid < 1 or self.max_relative - 1 <= mid:
        raise ValueError(f"position_buckets {self.position_buckets} needs 2 <= position_buckets "
                         f"and max relative positions {self.max_relative} > position_buckets/2 + 1")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def max_relative(self) -> int:
    """HF's effective `max_relative_positions`."""
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

  @property
  def att_span(self) -> int:
    """Half the number of relative embeddings (HF's `pos_ebd_size`)."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative

  @property
  def embed_dim(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def rel_layer_norm(self) -> bool:
    return "layer_norm" in {n.strip() for n in self.norm_rel_ebd.lower().split("|")}


_V3 = {"vocab_size": 128100, "num_hidden_layers": 12, "max_position_embeddings": 512,
       "relative_attention": True, "max_relative_positions": -1, "position_buckets": 256,
       "pos_att_type": ("p2c", "c2p"), "share_att_key": True, "norm_rel_ebd": "layer_norm",
       "position_biased_input": False, "type_vocab_size": 0, "layer_norm_eps": 1e-7}

PRESETS: dict[str, dict[str, Any]] = {
    # Test shape: few buckets and a short max distance so short rows reach the log buckets.
    "deberta-tiny": {**_V3, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 64, "position_buckets": 8, "max_relative_positions": 16,
                     "max_position_embeddings": 64},
    "deberta-v3-xsmall": {**_V3, "hidden_size": 384, "num_attention_heads": 6,
                          "intermediate_size": 1536},
    "deberta-v3-base": {**_V3, "hidden_size": 768, "num_attention_heads": 12,
                        "intermediate_size": 3072},
}

# The family's description for the registry (models/families.py documents these names).
KIND = "encoder"
MODEL_TYPES = ("deberta-v2",)
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
STUDENT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "deberta-tiny": ("deberta-tiny", {}),
    "deberta-v3-xsmall": ("deberta-v3-xsmall", {}),
    "deberta-v3-base": ("deberta-v3-base", {}),
}


def get_config(preset: str, **overrides: Any) -> DebertaConfig:
  """Returns the preset's DebertaConfig with `overrides` (e.g. vocab_size, dtype) applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown DeBERTa preset {preset!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(DebertaConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown DebertaConfig fields: {sorted(unknown)}")
  return DebertaConfig(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------- relative positions


def log_bucket_position(rel: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
  """HF's `make_log_bucket_position` in numpy float32 (the same roundings as torch's; XLA's
  constant-folded log differs by an ulp at exact points, so it is not computed on device)."""
  rel = np.asarray(rel, np.int64)
  mid = bucket_size // 2
  abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
  ratio = abs_pos.astype(np.float32) / np.float32(mid)
  with np.errstate(divide="ignore", invalid="ignore"):  # log(0) when mid == 1: not selected
    log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid))
                      * np.float32(mid - 1)) + mid
    log_pos = np.nan_to_num(log_pos).astype(np.int64)
  return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel))


@functools.cache
def relative_index_table(position_buckets: int, max_relative: int) -> tuple[np.ndarray, int]:
  """(table, t): idx(rel) = table[clip(rel, -t, t) + t] is the row of the relative embeddings
  used for query_pos - key_pos = rel. Exact because idx saturates (0 / 2 span - 1) beyond +-t."""
  span = position_buckets if position_buckets > 0 else max_relative
  t = span
  while True:
    rel = np.arange(-t, t + 1)
    if position_buckets > 0:
      rel = log_bucket_position(rel, position_buckets, max_relative)
    table = np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)
    # mid == 1 buckets are constant (+-1) beyond |rel| = 1.
    if (table[0] == 0 and table[-1] == 2 * span - 1) or position_buckets // 2 == 1:
      return table, t
    if t > 1 << 22:
      raise ValueError(f"relative positions do not saturate for position_buckets="
                       f"{position_buckets}, max_relative_positions={max_relative}")
    t *= 2


def relative_indices(config: DebertaConfig, positions: Array) -> Array:
  """positions [B, L] -> int32 [B, L, L] rows of the relative embeddings (query x key)."""
  table, t = relative_index_table(config.position_buckets, config.max_relative)
  rel = positions[:, :, None] - positions[:, None, :]
  return jnp.asarray(table)[jnp.clip(rel, -t, t) + t]


# --------------------------------------------------------------------------- layers


def _kernel(rngs, config: DebertaConfig, shape, axes) -> nnx.Param:
  return common.param(rngs, common.normal(config.initializer_range), shape, axes, config.param_dtype)


def _zeros(rngs, config: DebertaConfig, shape, axes) -> nnx.Param:
  return common.param(rngs, nnx.initializers.zeros, shape, axes, config.param_dtype)


def _layer_norm(config: DebertaConfig, rngs: nnx.Rngs) -> common.LayerNorm:
  return common.LayerNorm(config.hidden_size, config.layer_norm_eps, config.dtype,
                          config.param_dtype, rngs=rngs)


class HeadProjection(nnx.Module):
  """x [..., hidden] -> [..., heads, head_dim], a 2-D matmul on the flattened kernel (+ bias)."""

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    d, h, k = config.hidden_size, config.num_attention_heads, config.head_dim
    self.dtype = config.dtype
    self.kernel = _kernel(rngs, config, (d, h, k), ("embed", "heads", "kv"))
    self.bias = _zeros(rngs, config, (h, k), ("heads", "kv"))

  def __call__(self, x: Array) -> Array:
    d, h, k = self.kernel.shape
    y = x @ self.kernel[...].astype(self.dtype).reshape(d, h * k)
    return (y + self.bias[...].astype(self.dtype).reshape(h * k)).reshape(*x.shape[:-1], h, k)


class Attention(nnx.Module):
  """Disentangled self-attention + output projection + residual post-LN."""

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    h, k, d = config.num_attention_heads, config.head_dim, config.hidden_size
    self.dtype = config.dtype
    self.pos_att_type = config.pos_att_type
    self.relative_attention = config.relative_attention
    self.scale = float((k * (1 + len(config.pos_att_type))) ** -0.5)
    self.query = HeadProjection(config, rngs=rngs)
    self.key = HeadProjection(config, rngs=rngs)
    self.value = HeadProjection(config, rngs=rngs)
    # Separate positional projections only without share_att_key (None: use query / key).
    separate = config.relative_attention and not config.share_att_key
    self.pos_key = (HeadProjection(config, rngs=rngs)
                    if separate and "c2p" in config.pos_att_type else None)
    self.pos_query = (HeadProjection(config, rngs=rngs)
                      if separate and "p2c" in config.pos_att_type else None)
    self.o = _kernel(rngs, config, (h, k, d), ("heads", "kv", "embed"))
    self.o_bias = _zeros(rngs, config, (d,), ("embed",))
    self.norm = _layer_norm(config, rngs)
    self.probs_dropout = nnx.Dropout(config.attention_probs_dropout_prob)
    self.pos_dropout = nnx.Dropout(config.hidden_dropout_prob)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def _scores(self, q: Array, k: Array, mask: Array, rel_idx: Array | None,
              rel_emb: Array | None, rngs: nnx.Rngs | None) -> Array:
    """float32 [B,H,Q,K] scaled, masked scores."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if self.relative_attention and self.pos_att_type:
      rel_emb = self.pos_dropout(rel_emb, deterministic=rngs is None, rngs=rngs)
      idx = rel_idx[:, None]  # [B,1,Q,K]
      if "c2p" in self.pos_att_type:
        pos_k = (self.key if self.pos_key is None else self.pos_key)(rel_emb)  # [R,H,D]
        c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_k, preferred_element_type=jnp.float32)
        scores = scores + jnp.take_along_axis(c2p, idx, axis=-1)
      if "p2c" in self.pos_att_type:
        pos_q = (self.query if self.pos_query is None else self.pos_query)(rel_emb)
        p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_q, preferred_element_type=jnp.float32)
        # p2c[q, k] = p2c_all[k, idx[q, k]]: gather along r for each key row, then transpose.
        scores = scores + jnp.take_along_axis(p2c, idx.swapaxes(-1, -2), axis=-1).swapaxes(-1, -2)
    return jnp.where(mask, scores * self.scale, common.NEG)

  def __call__(self, x: Array, mask: Array, rel_idx: Array | None, rel_emb: Array | None,
               rngs: nnx.Rngs | None) -> Array:
    det = rngs is None
    q, k, v = self.query(x), self.key(x), self.value(x)
    probs = jax.nn.softmax(self._scores(q, k, mask, rel_idx, rel_emb, rngs), axis=-1)
    probs = self.probs_dropout(probs, deterministic=det, rngs=rngs)
    a = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    h, kd, d = self.o.shape
    out = a.reshape(*a.shape[:-2], h * kd) @ self.o[...].astype(self.dtype).reshape(h * kd, d)
    out = self.dropout(out + self.o_bias[...].astype(self.dtype), deterministic=det, rngs=rngs)
    return self.norm(out + x)


class FeedForward(nnx.Module):
  """act(x wi + b) wo + b, then residual post-LN."""

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.dtype = config.dtype
    self.hidden_act = config.hidden_act  # the name, not a closure: equal configs, equal graphdefs
    self.wi = _kernel(rngs, config, (d, f), ("embed", "mlp"))
    self.wi_bias = _zeros(rngs, config, (f,), ("mlp",))
    self.wo = _kernel(rngs, config, (f, d), ("mlp", "embed"))
    self.wo_bias = _zeros(rngs, config, (d,), ("embed",))
    self.norm = _layer_norm(config, rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, x: Array, rngs: nnx.Rngs | None) -> Array:
    dt = self.dtype
    h = _ACTIVATIONS[self.hidden_act](x @ self.wi[...].astype(dt) + self.wi_bias[...].astype(dt))
    out = h @ self.wo[...].astype(dt) + self.wo_bias[...].astype(dt)
    return self.norm(self.dropout(out, deterministic=rngs is None, rngs=rngs) + x)


class Layer(nnx.Module):

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    self.attention = Attention(config, rngs=rngs)
    self.ff = FeedForward(config, rngs=rngs)

  def __call__(self, x: Array, mask: Array, rel_idx: Array | None, rel_emb: Array | None,
               rngs: nnx.Rngs | None) -> Array:
    return self.ff(self.attention(x, mask, rel_idx, rel_emb, rngs), rngs)


class Embeddings(nnx.Module):

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    e, d = config.embed_dim, config.hidden_size
    self.dtype = config.dtype
    self.word = _kernel(rngs, config, (config.vocab_size, e), ("vocab", "embed"))
    self.position = (_kernel(rngs, config, (config.max_position_embeddings, e), ("length", "embed"))
                     if config.position_biased_input else None)
    self.token_type = (_kernel(rngs, config, (config.type_vocab_size, e), (None, "embed"))
                       if config.type_vocab_size > 0 else None)
    self.proj = _kernel(rngs, config, (e, d), (None, "embed")) if e != d else None
    self.norm = _layer_norm(config, rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout_prob)

  def __call__(self, ids: Array, segment_ids: Array, positions: Array, token_type_ids: Array,
               rngs: nnx.Rngs | None) -> Array:
    x = jnp.take(self.word[...], ids, axis=0).astype(self.dtype)
    if self.position is not None:
      x = x + jnp.take(self.position[...], positions, axis=0).astype(self.dtype)
    if self.token_type is not None:
      x = x + jnp.take(self.token_type[...], token_type_ids, axis=0).astype(self.dtype)
    if self.proj is not None:
      x = x @ self.proj[...].astype(self.dtype)
    # HF zeroes padding after the norm (it only changes padding outputs, kept for parity).
    x = self.norm(x) * (segment_ids != 0)[..., None].astype(self.dtype)
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)


class Encoder(nnx.Module):
  """Layers plus the relative-embedding table they share."""

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    rel = config.relative_attention
    self.rel_embeddings = (_kernel(rngs, config, (2 * config.att_span, config.hidden_size),
                                   ("relpos_buckets", "embed")) if rel else None)
    self.rel_norm = _layer_norm(config, rngs) if rel and config.rel_layer_norm else None
    self.layers = stack.build(lambda: Layer(config, rngs=rngs), config.num_hidden_layers,
                              scan=config.scan_layers)


# --------------------------------------------------------------------------- model


class Deberta(nnx.Module):
  """DeBERTa-v2/v3 encoder: token ids -> last hidden state (transformers' DebertaV2Model)."""

  def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = Embeddings(config, rngs=rngs)
    self.encoder = Encoder(config, rngs=rngs)

  def __call__(self, input_ids: Array, segment_ids: Array | None = None,
               positions: Array | None = None, token_type_ids: Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> Array:
    """[B, L] ids -> hidden [B, L, hidden] in config.dtype. `rngs=None` disables dropout.

    Defaults: segment_ids = (ids != pad_token_id), positions = 0..L-1, token types 0.
    """
    cfg = self.config
    if segment_ids is None:
      segment_ids = common.default_segments(input_ids, cfg.pad_token_id)
    if positions is None:
      positions = common.default_positions(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, segment_ids, positions, token_type_ids, rngs)
    mask = common.segment_mask(segment_ids, segment_ids)
    enc = self.encoder
    rel_idx = rel_emb = None
    if cfg.relative_attention:
      rel_idx = relative_indices(cfg, positions)
      rel_emb = enc.rel_embeddings[...].astype(cfg.dtype)
      if enc.rel_norm is not None:
        rel_emb = enc.rel_norm(rel_emb)
    x, _ = stack.run(enc.layers, lambda layer, x, _, rngs: (layer(x, mask, rel_idx, rel_emb, rngs), None), x,
                     remat=cfg.remat, rngs=rngs)
    return x


def build(config: DebertaConfig, rngs: nnx.Rngs) -> Deberta:
  return Deberta(config, rngs=rngs)


# --------------------------------------------------------------------------- HF mapping


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> DebertaConfig:
  """HF `config.json` dict (or `DebertaV2Config.to_dict()`) -> DebertaConfig; `overrides`
  e.g. dtype. Missing keys take HF's defaults (which are DeBERTa-v2's, not v3's)."""
  c = dict(hf_config)
  if (c.get("conv_kernel_size") or 0) > 0:
    raise ValueError(f"conv_kernel_size={c['conv_kernel_size']}: DeBERTa-v2's ConvLayer is not "
                     "supported (DeBERTa-v3 checkpoints have none)")
  hidden = c.get("hidden_size", 1536)
  heads = c.get("num_attention_heads", 24)
  head_size = c.get("attention_head_size")
  if head_size is not None and head_size * heads != hidden:
    raise ValueError(f"attention_head_size={head_size} with {heads} heads != hidden_size {hidden}")
  embedding_size = c.get("embedding_size")
  kwargs = {
      "vocab_size": c.get("vocab_size", 128100),
      "hidden_size": hidden,
      "num_hidden_layers": c.get("num_hidden_layers", 24),
      "num_attention_heads": heads,
      "intermediate_size": c.get("intermediate_size", 6144),
      "hidden_act": c.get("hidden_act", "gelu"),
      "hidden_dropout_prob": c.get("hidden_dropout_prob", 0.1),
      "attention_probs_dropout_prob": c.get("attention_probs_dropout_prob", 0.1),
      "max_position_embeddings": c.get("max_position_embeddings", 512),
      "type_vocab_size": c.get("type_vocab_size", 0),
      "initializer_range": c.get("initializer_range", 0.02),
      "layer_norm_eps": c.get("layer_norm_eps", 1e-7),
      "relative_attention": c.get("relative_attention", False),
      "max_relative_positions": c.get("max_relative_positions", -1),
      "position_buckets": c.get("position_buckets", -1),
      "pos_att_type": c.get("pos_att_type") or (),
      "share_att_key": c.get("share_att_key", False),
      "norm_rel_ebd": c.get("norm_rel_ebd", "none"),
      "position_biased_input": c.get("position_biased_input", True),
      "pad_token_id": c.get("pad_token_id") or 0,
      "embedding_size": None if embedding_size in (None, hidden) else embedding_size,
  }
  kwargs.update(overrides)
  return DebertaConfig(**kwargs)


def hf_config(config: DebertaConfig) -> dict[str, Any]:
  """config.json that transformers' AutoModel loads as DebertaV2Model."""
  return {
      "architectures": ["DebertaV2Model"], "model_type": "deberta-v2",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
      "intermediate_size": config.intermediate_size, "hidden_act": config.hidden_act,
      "hidden_dropout_prob": config.hidden_dropout_prob,
      "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size, "initializer_range": config.initializer_range,
      "layer_norm_eps": config.layer_norm_eps, "relative_attention": config.relative_attention,
      "max_relative_positions": config.max_relative_positions,
      "position_buckets": config.position_buckets, "pos_att_type": list(config.pos_att_type),
      "share_att_key": config.share_att_key, "norm_rel_ebd": config.norm_rel_ebd,
      "position_biased_input": config.position_biased_input, "pad_token_id": config.pad_token_id,
      "embedding_size": config.embed_dim}


def hf_mapping(model: Deberta) -> list[hf.Tensor]:
  """Every parameter of `model` with its name and layout in HF `DebertaV2Model`."""
  cfg = model.config
  d, h, k = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  rows: list[hf.Tensor] = []

  def norm(prefix, ln):
    rows.append(hf.Tensor(f"{prefix}.weight", ln.scale))
    rows.append(hf.Tensor(f"{prefix}.bias", ln.bias))

  def heads(prefix, proj):
    rows.append(hf.Tensor(f"{prefix}.weight", proj.kernel,
                          lambda w: w.T.reshape(d, h, k), lambda w: w.reshape(d, h * k).T))
    rows.append(hf.Tensor(f"{prefix}.bias", proj.bias,
                          lambda b: b.reshape(h, k), lambda b: b.reshape(h * k)))

  emb = model.embeddings
  rows.append(hf.Tensor("embeddings.word_embeddings.weight", emb.word))
  if emb.position is not None:
    rows.append(hf.Tensor("embeddings.position_embeddings.weight", emb.position))
  if emb.token_type is not None:
    rows.append(hf.Tensor("embeddings.token_type_embeddings.weight", emb.token_type))
  if emb.proj is not None:
    rows.append(hf.linear("embeddings.embed_proj.weight", emb.proj))
  norm("embeddings.LayerNorm", emb.norm)
  enc = model.encoder
  if enc.rel_embeddings is not None:
    rows.append(hf.Tensor("encoder.rel_embeddings.weight", enc.rel_embeddings))
  if enc.rel_norm is not None:
    norm("encoder.LayerNorm", enc.rel_norm)
  for i, layer in enumerate(enc.layers):
    p = f"encoder.layer.{i}"
    att = layer.attention
    heads(f"{p}.attention.self.query_proj", att.query)
    heads(f"{p}.attention.self.key_proj", att.key)
    heads(f"{p}.attention.self.value_proj", att.value)
    if att.pos_key is not None:
      heads(f"{p}.attention.self.pos_key_proj", att.pos_key)
    if att.pos_query is not None:
      heads(f"{p}.attention.self.pos_query_proj", att.pos_query)
    rows.append(hf.Tensor(f"{p}.attention.output.dense.weight", att.o,
                          lambda w: w.T.reshape(h, k, d), lambda w: w.reshape(h * k, d).T))
    rows.append(hf.Tensor(f"{p}.attention.output.dense.bias", att.o_bias))
    norm(f"{p}.attention.output.LayerNorm", att.norm)
    rows.append(hf.linear(f"{p}.intermediate.dense.weight", layer.ff.wi))
    rows.append(hf.Tensor(f"{p}.intermediate.dense.bias", layer.ff.wi_bias))
    rows.append(hf.linear(f"{p}.output.dense.weight", layer.ff.wo))
    rows.append(hf.Tensor(f"{p}.output.dense.bias", layer.ff.wo_bias))
    norm(f"{p}.output.LayerNorm", layer.ff.norm)
  return rows


HF_PREFIXES = ("deberta.",)

# Read and dropped: the position_ids buffer, absolute position embeddings that original v3
# checkpoints carry although position_biased_input is off (HF drops them too), task heads.
HF_IGNORED = (
    r"embeddings\.position_ids",
    r"embeddings\.position_embeddings\.weight",
    r"(classifier|pooler|cls|lm_predictions|mask_predictions|qa_outputs)\..*",
)

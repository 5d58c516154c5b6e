"""Llama-style decoder-only LMs in Flax NNX: Llama 2/3/3.1/3.2, SmolLM2, Qwen2/2.5, Qwen3, Mistral.

One file per model family (see t5.py): the architecture, presets, the KV-cache API used by
`jaxdistill.models.decode.causal_lm_generate`, and the mapping to and from Hugging Face
`LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` / `MistralForCausalLM` weights
(checked by golden-logit tests in tests/test_llama.py).

Architecture (as in HF, so pretrained checkpoints load unchanged):
- Pre-norm blocks: x += attn(rms(x)); x += mlp(rms(x)); final RMSNorm. RMSNorm statistics in
  float32, the normalised value cast to the activation dtype before the scale (HF order).
- Rotary embeddings (HF's rotate-half layout: pairs are (i, i + head_dim/2)), angles computed in
  float32 from per-token `positions`, optionally with Llama-3 frequency scaling.
- Grouped-query attention: query head h reads kv head h // (heads / kv_heads), scaled by
  head_dim**-0.5. Qwen2 adds biases to q/k/v; Llama's `attention_bias` also biases o; Qwen3
  RMS-normalises each q/k head (before rotary).
- SwiGLU MLP: down(silu(gate(x)) * up(x)), optional biases (Llama `mlp_bias`).
- Tied (`tie_word_embeddings`) or separate LM head; no output scaling. No dropout.

Masks come from segment ids (0 = padding, 1.. = packed record) and are causal by index;
rotary angles come from positions restarting at 0 per record, so a packed row computes
exactly what its records compute in separate rows.

Parameter layout and logical axes (heads a separate axis: tensor parallelism shards "heads" /
"kv_heads" / "mlp", FSDP shards "embed"; projections run as 2-D matmuls on flattened views):
    embed_tokens                 [vocab, hidden]             ("vocab", "embed")
    lm_head (untied)             [hidden, vocab]             ("embed", "vocab")
    q_proj                       [hidden, heads, head_dim]   ("embed", "heads", "kv")
    k_proj / v_proj              [hidden, kv_heads, head_dim] ("embed", "kv_heads", "kv")
    o_proj                       [heads, head_dim, hidden]   ("heads", "kv", "embed")
    q_bias / k_bias / v_bias     [heads|kv_heads, head_dim]  ("heads"|"kv_heads", "kv")
    o_bias                       [hidden]                    ("embed",)
    q_norm / k_norm (Qwen3)      [head_dim]                  ("kv",)
    gate_proj / up_proj          [hidden, intermediate]      ("embed", "mlp")
    down_proj                    [intermediate, hidden]      ("mlp", "embed")
    RMSNorm scale                [hidden]                    ("embed",)

KV cache (decoding): per layer k / v [B, kv_heads, max_len, head_dim] (head-major, written in
place at the step's index) plus `valid` [B, max_len] (False at left padding of the prompt) and
`offset` [B] (the row's pad count: rotary position = cache index - offset).

`config.scan_layers` keeps the layers stacked (every layer parameter above gets a leading "layers"
axis, the cache's k / v too) and runs them with jax.lax.scan; `config.remat` rematerialises each
layer in the backward pass (models/stack.py). Neither changes the HF layout nor the outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import FrozenDict

from jaxdistill.models import common, hf, stack

Array = jax.Array
DType = Any

# HF model_type -> the architecture class transformers builds for it.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shapes and numerics of a Llama-family model. Frozen (and hashable) so it can be static."""

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None: = num_attention_heads (no GQA)
  head_dim: int | None = None  # None: hidden_size // num_attention_heads
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # None or {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings}; stored as a (hashable) FrozenDict.
  rope_scaling: Mapping[str, Any] | None = None
  attention_bias: bool = False  # bias on q / k / v
  attention_out_bias: bool | None = None  # bias on o; None: = attention_bias (Llama, Qwen3)
  mlp_bias: bool = False
  qk_norm: bool = False  # Qwen3: per-head RMSNorm of q and k before rotary
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = None
  model_type: str = "llama"  # what `hf_config` writes: "llama" | "qwen2" | "qwen3" | "mistral"
  dtype: DType = jnp.float32  # activations; softmax / norm statistics / logits in float32
  param_dtype: DType = jnp.float32
  remat: str = "none"  # per-layer rematerialisation: none | full | dots (models/stack.py)
  scan_layers: bool = False  # the layers stacked and run by jax.lax.scan (models/stack.py)

  def __post_init__(self):
    def put(name, value):
      object.__setattr__(self, name, value)

    # Accept strings ("bfloat16") from ml_collections configs / the command line.
    put("dtype", jnp.dtype(self.dtype))
    put("param_dtype", jnp.dtype(self.param_dtype))
    if self.num_key_value_heads is None:
      put("num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      put("head_dim", self.hidden_size // self.num_attention_heads)
    if self.attention_out_bias is None:
      put("attention_out_bias", self.attention_bias)
    if isinstance(self.eos_token_id, (list, tuple)):
      put("eos_token_id", tuple(int(i) for i in self.eos_token_id))
    put("rope_scaling", _check_rope_scaling(self.rope_scaling))
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
    if self.model_type not in ARCHITECTURES:
      raise ValueError(f"model_type {self.model_type!r} not in {sorted(ARCHITECTURES)}")
    stack.check_remat(self.remat)

  @property
  def kv_groups(self) -> int:
    return self.num_attention_heads // self.num_key_value_heads


def _check_rope_scaling(rope_scaling: Mapping[str, Any] | None) -> FrozenDict | None:
  if rope_scaling is None:
    return None
  d = dict(rope_scaling)
  rope_type = d.get("rope_type", d.get("type"))
  if rope_type != "llama3":
    raise ValueError(f"unsupported rope scaling {rope_type!r} (supported: None, 'llama3')")
  missing = [k for k in _LLAMA3_KEYS if k not in d]
  if missing:
    raise ValueError(f"llama3 rope_scaling lacks {missing}: {d}")
  return FrozenDict({"rope_type": "llama3", **{k: d[k] for k in _LLAMA3_KEYS}})


PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "tie_word_embeddings": True},
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
                     "max_position_embeddings": 8192, "initializer_range": 0.041666666666666664,
                     "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None},
    # Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "attention_bias": True,
                     "attention_out_bias": False, "tie_word_embeddings": True,
                     "max_position_embeddings": 32768, "bos_token_id": 151643,
                     "eos_token_id": 151643, "pad_token_id": None, "model_type": "qwen2"},
    # Qwen/Qwen3-0.6B
    "qwen3-0.6b": {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
                   "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "qk_norm": True, "tie_word_embeddings": True, "max_position_embeddings": 40960,
                   "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": None,
                   "model_type": "qwen3"},
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192},
                     "tie_word_embeddings": True, "max_position_embeddings": 131072,
                     "bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": None},
}

# The family's description for the registry (models/families.py documents these names).
KIND = "decoder"
MODEL_TYPES = tuple(ARCHITECTURES)
DROPOUT_FIELDS = ()  # the Llama family has no dropout
STUDENT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-tiny": ("llama-tiny", {}),
    "smollm2-135m": ("smollm2-135m", {}),
    "qwen2.5-0.5b": ("qwen2.5-0.5b", {}),
    "qwen3-0.6b": ("qwen3-0.6b", {}),
    "llama-3.2-1b": ("llama-3.2-1b", {}),
}


def get_config(preset: str, **overrides: Any) -> LlamaConfig:
  """Returns the preset's LlamaConfig with `overrides` (e.g. vocab_size, dtype) applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown Llama preset {preset!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown LlamaConfig fields: {sorted(unknown)}")
  return LlamaConfig(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------- rotary


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
  """Inverse frequencies [head_dim / 2], float32 numpy in HF's order of operations."""
  dim = config.head_dim
  inv = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2).astype(np.float32) / dim))).astype(np.float32)
  s = config.rope_scaling
  if s is None:
    return inv
  # Llama 3.1: long wavelengths divided by `factor`, short ones kept, smooth blend between.
  factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
  old_len = s["original_max_position_embeddings"]
  wavelen = (2 * math.pi / inv).astype(np.float32)
  scaled = np.where(wavelen > old_len / low, inv / factor, inv).astype(np.float32)
  smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
  smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary(positions: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
  """positions [B, L] -> float32 (cos, sin) [B, L, 1, head_dim / 2] (broadcast over heads)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  return jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
  """HF rotate-half on x [B, L, H, D]: dims i and i + D/2 form a rotating pair; float32 math."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


# --------------------------------------------------------------------------- layers


class RMSNorm(nnx.Module):
  """Scale-only RMSNorm over the last axis: float32 statistics, HF's cast order."""

  def __init__(self, dim: int, eps: float, axis_name: str, config: LlamaConfig, *,
               rngs: nnx.Rngs):
    self.eps, self.dtype = eps, config.dtype
    self.scale = common.param(rngs, nnx.initializers.ones, (dim,), (axis_name,), config.param_dtype)

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return y * self.scale[...].astype(self.dtype)


def _zeros_or_none(enabled: bool, rngs: nnx.Rngs, shape, axes, dtype) -> nnx.Param | None:
  return common.param(rngs, nnx.initializers.zeros, shape, axes, dtype) if enabled else None


class Attention(nnx.Module):
  """GQA self-attention with rotary embeddings; `qkv` and `attend` are shared by the
  full-sequence and the KV-cache paths."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, h, kvh, hd = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                     config.head_dim)
    pd, init = config.param_dtype, common.normal(config.initializer_range)
    self.dtype = config.dtype
    self.inv_freq = tuple(rope_inv_freq(config).tolist())  # hashable static, not a parameter
    self.q_proj = common.param(rngs, init, (d, h, hd), ("embed", "heads", "kv"), pd)
    self.k_proj = common.param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "kv"), pd)
    self.v_proj = common.param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "kv"), pd)
    self.o_proj = common.param(rngs, init, (h, hd, d), ("heads", "kv", "embed"), pd)
    bias = config.attention_bias
    self.q_bias = _zeros_or_none(bias, rngs, (h, hd), ("heads", "kv"), pd)
    self.k_bias = _zeros_or_none(bias, rngs, (kvh, hd), ("kv_heads", "kv"), pd)
    self.v_bias = _zeros_or_none(bias, rngs, (kvh, hd), ("kv_heads", "kv"), pd)
    self.o_bias = _zeros_or_none(config.attention_out_bias, rngs, (d,), ("embed",), pd)
    if config.qk_norm:
      self.q_norm = RMSNorm(hd, config.rms_norm_eps, "kv", config, rngs=rngs)
      self.k_norm = RMSNorm(hd, config.rms_norm_eps, "kv", config, rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  def _proj(self, x: Array, kernel: nnx.Param, bias: nnx.Param | None) -> Array:
    # A 2-D matmul on the flattened kernel (XLA:CPU differentiates 3-D-kernel einsums slower).
    d, h, k = kernel.shape
    y = (x @ kernel[...].astype(self.dtype).reshape(d, h * k)).reshape(*x.shape[:-1], h, k)
    return y if bias is None else y + bias[...].astype(self.dtype)

  def qkv(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
    """x [B,L,D] -> q [B,L,H,Dh], k and v head-major [B,KV,L,Dh]; q and k rotated."""
    q = self._proj(x, self.q_proj, self.q_bias)
    k = self._proj(x, self.k_proj, self.k_bias)
    v = self._proj(x, self.v_proj, self.v_bias)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    cos, sin = rotary(positions, np.asarray(self.inv_freq, np.float32))
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    return q, k.swapaxes(1, 2), v.swapaxes(1, 2)

  def attend(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q [B,Q,H,Dh] over k/v [B,KV,S,Dh] with bool mask ~[B,1,Q,S] -> output [B,Q,D]."""
    b, length, h, hd = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, length, kvh, h // kvh, hd)  # head h = kv_head * groups + g (HF repeat_kv)
    scores = jnp.einsum("bqkgd,bksd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, :, None], scores * hd ** -0.5, common.NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    a = jnp.einsum("bkgqs,bksd->bqkgd", probs.astype(v.dtype), v).reshape(b, length, h * hd)
    out = a @ self.o_proj[...].astype(self.dtype).reshape(h * hd, -1)
    return out if self.o_bias is None else out + self.o_bias[...].astype(self.dtype)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, f, pd = config.hidden_size, config.intermediate_size, config.param_dtype
    init = common.normal(config.initializer_range)
    self.dtype = config.dtype
    self.gate_proj = common.param(rngs, init, (d, f), ("embed", "mlp"), pd)
    self.up_proj = common.param(rngs, init, (d, f), ("embed", "mlp"), pd)
    self.down_proj = common.param(rngs, init, (f, d), ("mlp", "embed"), pd)
    self.gate_bias = _zeros_or_none(config.mlp_bias, rngs, (f,), ("mlp",), pd)
    self.up_bias = _zeros_or_none(config.mlp_bias, rngs, (f,), ("mlp",), pd)
    self.down_bias = _zeros_or_none(config.mlp_bias, rngs, (d,), ("embed",), pd)

  def _dense(self, x: Array, kernel: nnx.Param, bias: nnx.Param | None) -> Array:
    y = x @ kernel[...].astype(self.dtype)
    return y if bias is None else y + bias[...].astype(self.dtype)

  def __call__(self, x: Array) -> Array:
    h = jax.nn.silu(self._dense(x, self.gate_proj, self.gate_bias)) * self._dense(
        x, self.up_proj, self.up_bias)
    return self._dense(h, self.down_proj, self.down_bias)


class DecoderLayer(nnx.Module):

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, eps = config.hidden_size, config.rms_norm_eps
    self.input_layernorm = RMSNorm(d, eps, "embed", config, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(d, eps, "embed", config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x: Array, positions: Array, mask: Array,
               cache: dict[str, Array] | None = None,
               index: Array | None = None) -> tuple[Array, dict[str, Array] | None]:
    """x [B,L,D]. With a cache, this chunk's K/V are written at `index` first and the
    queries attend over the whole cache (mask [B,1,L,max_len])."""
    q, k, v = self.self_attn.qkv(self.input_layernorm(x), positions)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=2)
      v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=2)
      cache = {"k": k, "v": v}
    x = x + self.self_attn.attend(q, k, v, mask)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, cache


# --------------------------------------------------------------------------- model


class Llama(nnx.Module):
  """Decoder-only LM. See the module docstring for layout, masks, cache and sharding names."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, vocab, pd = config.hidden_size, config.vocab_size, config.param_dtype
    init = common.normal(config.initializer_range)
    self.embed_tokens = common.param(rngs, init, (vocab, d), ("vocab", "embed"), pd)
    self.layers = stack.build(lambda: DecoderLayer(config, rngs=rngs), config.num_hidden_layers,
                              scan=config.scan_layers)
    self.norm = RMSNorm(d, config.rms_norm_eps, "embed", config, rngs=rngs)
    if not config.tie_word_embeddings:
      self.lm_head = common.param(rngs, init, (d, vocab), ("embed", "vocab"), pd)

  def _logits(self, hidden: Array) -> Array:
    dtype = self.config.dtype
    if self.config.tie_word_embeddings:
      return jnp.einsum("...d,vd->...v", hidden, self.embed_tokens[...].astype(dtype),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...].astype(dtype),
                      preferred_element_type=jnp.float32)

  def _run(self, ids: Array, positions: Array, mask: Array, cache: dict[str, Any] | None = None,
           index: Array | None = None) -> tuple[Array, Array, list | None]:
    x = jnp.take(self.embed_tokens[...], ids, axis=0).astype(self.config.dtype)

    def layer_fn(layer, x, layer_cache, rngs):
      del rngs  # no dropout
      return layer(x, positions, mask, layer_cache, index)

    x, new_layers = stack.run(self.layers, layer_fn, x, None if cache is None else cache["layers"],
                              remat=self.config.remat)
    hidden = self.norm(x)
    return common.constrain_logits(self._logits(hidden)), hidden, None if cache is None else new_layers

  def forward(self, input_ids: Array, segment_ids: Array | None = None,
              positions: Array | None = None, *,
              rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
    """[B,L] ids -> (logits [B,L,V] float32, final hidden [B,L,D]).

    `segment_ids=None`: every position is valid (the pad id can be a real token);
    `positions=None`: 0..L-1. `rngs` is accepted for interface symmetry (no dropout).
    """
    del rngs
    if segment_ids is None:
      segment_ids = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
      positions = common.default_positions(input_ids)
    mask = common.segment_mask(segment_ids, segment_ids, causal=True)
    logits, hidden, _ = self._run(input_ids, positions, mask)
    return logits, hidden

  def __call__(self, batch: Mapping[str, Array], *,
               rngs: nnx.Rngs | None = None) -> dict[str, Array]:
    """Forward on a Batch dict: `decoder_input_ids`, optional `decoder_segment_ids` (default
    all ones) and `decoder_positions` (default 0..L-1)."""
    logits, hidden = self.forward(batch["decoder_input_ids"], batch.get("decoder_segment_ids"),
                                  batch.get("decoder_positions"), rngs=rngs)
    return {"logits": logits, "decoder_hidden": hidden}

  # ---- KV-cache API (used by jaxdistill.models.decode.causal_lm_generate)

  def init_cache(self, prompt_mask: Array, max_len: int) -> dict[str, Any]:
    """Empty cache for a left-padded prompt batch (prompt_mask [B,P], 0 at padding).

    Cache slots 0..P-1 hold the prompt (pad slots never attended), slots P.. the generated
    tokens. Returns {"layers": [{"k","v": [B,KV,max_len,Dh] zeros}] (scan_layers: one {"k","v":
    [layers,B,KV,max_len,Dh]}), "valid": bool [B,max_len], "offset": int32 [B] (pad count; rotary
    position = slot - offset)}.
    """
    cfg = self.config
    batch, length = prompt_mask.shape
    if max_len < length:
      raise ValueError(f"cache length {max_len} < prompt length {length}")
    zeros = jnp.zeros((batch, cfg.num_key_value_heads, max_len, cfg.head_dim), cfg.dtype)
    valid = jnp.concatenate([prompt_mask != 0, jnp.ones((batch, max_len - length), bool)], axis=1)
    offset = length - jnp.sum(prompt_mask != 0, axis=1).astype(jnp.int32)
    return {"layers": stack.per_layer(self.layers, lambda: {"k": zeros, "v": zeros}), "valid": valid,
            "offset": offset}

  def extend(self, token_ids: Array, index: Array | int,
             cache: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """Runs token_ids [B,Q] at cache slots index..index+Q-1 (prefill: the prompt at 0; a
    decoding step: Q = 1). Returns (logits [B,Q,V] float32, updated cache)."""
    max_len = cache["valid"].shape[1]
    slots = jnp.asarray(index, jnp.int32) + jnp.arange(token_ids.shape[1], dtype=jnp.int32)
    positions = jnp.maximum(slots[None, :] - cache["offset"][:, None], 0)
    causal = jnp.arange(max_len, dtype=jnp.int32)[None, :] <= slots[:, None]  # [Q, max_len]
    mask = (cache["valid"][:, None, :] & causal[None])[:, None]  # [B,1,Q,max_len]
    logits, _, layers = self._run(token_ids, positions, mask, cache, index)
    return logits, {**cache, "layers": layers}

  def decode_step(self, token_ids: Array, position: Array,
                  cache: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """One token per row: token_ids [B] at cache slot `position` -> (logits [B,V], cache)."""
    logits, cache = self.extend(token_ids[:, None], position, cache)
    return logits[:, 0], cache


def build(config: LlamaConfig, rngs: nnx.Rngs) -> Llama:
  return Llama(config, rngs=rngs)


# --------------------------------------------------------------------------- HF mapping


def _rope_from_hf(c: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
  """(rope_theta, rope_scaling) from a v4 (`rope_theta` + `rope_scaling`) or v5
  (`rope_parameters`, holding rope_theta too) config dict."""
  params = c.get("rope_parameters") or c.get("rope_scaling") or {}
  if params and not any(k in params for k in ("rope_type", "type", "rope_theta")):
    raise ValueError(f"per-layer rope parameters are not supported: {params}")
  theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError("partial_rotary_factor != 1 is not supported")
  if rope_type == "default":
    return theta, None
  scaling = dict(params)
  scaling.setdefault("original_max_position_embeddings", c.get("max_position_embeddings"))
  return theta, scaling  # LlamaConfig rejects types other than llama3 with a clear message


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
  """HF `config.json` dict (or `*Config.to_dict()`) -> LlamaConfig; `overrides` e.g. dtype."""
  c = dict(hf_config)
  model_type = c.get("model_type", "llama")
  if model_type not in ARCHITECTURES:
    raise ValueError(f"model_type {model_type!r} is not a Llama-family model")
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(f"unsupported hidden_act {c['hidden_act']!r} (only silu)")
  # (MistralConfig defaults to a 4096 window when the key is absent.)
  window = c.get("sliding_window", 4096) if model_type == "mistral" else None
  if c.get("use_sliding_window") or (window and window < c.get("max_position_embeddings", 32768)):
    raise ValueError("sliding-window attention is not supported")
  theta, scaling = _rope_from_hf(c)
  heads = c.get("num_attention_heads", 32)
  hidden = c.get("hidden_size", 4096)
  head_dim = c.get("head_dim") or (128 if model_type == "qwen3" else hidden // heads)
  kwargs = {
      "vocab_size": c.get("vocab_size", 32000), "hidden_size": hidden,
      "intermediate_size": c.get("intermediate_size", 11008),
      "num_hidden_layers": c.get("num_hidden_layers", 32), "num_attention_heads": heads,
      "num_key_value_heads": c.get("num_key_value_heads") or heads, "head_dim": head_dim,
      "rms_norm_eps": c.get("rms_norm_eps", 1e-6), "rope_theta": theta, "rope_scaling": scaling,
      # Qwen2 always has q/k/v biases and never an o bias; Llama / Qwen3 bias all four.
      "attention_bias": True if model_type == "qwen2" else bool(c.get("attention_bias", False)),
      "attention_out_bias": False if model_type == "qwen2" else None,
      "mlp_bias": bool(c.get("mlp_bias", False)), "qk_norm": model_type == "qwen3",
      "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
      "max_position_embeddings": c.get("max_position_embeddings", 2048),
      "initializer_range": c.get("initializer_range", 0.02),
      "bos_token_id": c.get("bos_token_id"), "eos_token_id": c.get("eos_token_id"),
      "pad_token_id": c.get("pad_token_id"), "model_type": model_type,
  }
  kwargs.update(overrides)
  return LlamaConfig(**kwargs)


def hf_config(config: LlamaConfig) -> dict[str, Any]:
  """config.json for transformers' `<model_type>ForCausalLM` (the inverse of `config_from_hf`)."""
  mt = config.model_type
  bias, out_bias = config.attention_bias, config.attention_out_bias
  # Each HF class fixes some choices; refuse to write a config that would load differently.
  problems = []
  if mt == "qwen2" and not (bias and not out_bias):
    problems.append("qwen2 has q/k/v biases and no o bias")
  if mt != "qwen2" and bias != out_bias:
    problems.append(f"{mt} biases q/k/v and o together")
  if mt == "mistral" and bias:
    problems.append("mistral has no attention biases")
  if config.mlp_bias and mt != "llama":
    problems.append(f"{mt} has no mlp biases")
  if config.qk_norm != (mt == "qwen3"):
    problems.append("qk_norm exactly when model_type is qwen3")
  if config.rope_scaling is not None and mt != "llama":
    problems.append("llama3 rope scaling is written only for model_type llama")
  if problems:
    raise ValueError(f"config cannot be written as HF {mt}: {'; '.join(problems)}")
  eos = config.eos_token_id
  out = {
      "architectures": [ARCHITECTURES[mt]], "model_type": mt, "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads,
      "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
      "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
      "rope_scaling": None if config.rope_scaling is None else dict(config.rope_scaling),
      "max_position_embeddings": config.max_position_embeddings,
      "initializer_range": config.initializer_range,
      "tie_word_embeddings": config.tie_word_embeddings, "attention_dropout": 0.0,
      "bos_token_id": config.bos_token_id, "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
      "pad_token_id": config.pad_token_id, "use_cache": True,
  }
  if mt in ("llama", "qwen3"):
    out["attention_bias"] = bias
  if mt == "llama":
    out["mlp_bias"] = config.mlp_bias
  if mt in ("qwen2", "qwen3"):
    out["use_sliding_window"] = False
  if mt == "mistral":
    out["sliding_window"] = None
  return out


def hf_mapping(model: Llama) -> list[hf.Tensor]:
  """Every parameter of `model` with its name and layout in HF `*ForCausalLM`."""
  cfg = model.config
  d, hd = cfg.hidden_size, cfg.head_dim
  rows = [hf.Tensor("model.embed_tokens.weight", model.embed_tokens)]

  def heads_in(name, param):  # torch [heads*hd, d] <-> ours [d, heads, hd]
    n = param.shape[1]
    rows.append(hf.Tensor(name, param, lambda w: w.T.reshape(d, n, hd),
                          lambda w: w.reshape(d, n * hd).T))

  def heads_bias(name, param):
    if param is not None:
      n = param.shape[0]
      rows.append(hf.Tensor(name, param, lambda w: w.reshape(n, hd), lambda w: w.reshape(n * hd)))

  def plain(name, param):
    if param is not None:
      rows.append(hf.Tensor(name, param))

  for i, layer in enumerate(model.layers):
    p, att, mlp = f"model.layers.{i}", layer.self_attn, layer.mlp
    for n in "qkv":
      heads_in(f"{p}.self_attn.{n}_proj.weight", getattr(att, f"{n}_proj"))
      heads_bias(f"{p}.self_attn.{n}_proj.bias", getattr(att, f"{n}_bias"))
    h = att.o_proj.shape[0]
    rows.append(hf.Tensor(f"{p}.self_attn.o_proj.weight", att.o_proj,
                          lambda w, h=h: w.T.reshape(h, hd, d), lambda w, h=h: w.reshape(h * hd, d).T))
    plain(f"{p}.self_attn.o_proj.bias", att.o_bias)
    if att.q_norm is not None:
      plain(f"{p}.self_attn.q_norm.weight", att.q_norm.scale)
      plain(f"{p}.self_attn.k_norm.weight", att.k_norm.scale)
    for n in ("gate", "up", "down"):
      rows.append(hf.linear(f"{p}.mlp.{n}_proj.weight", getattr(mlp, f"{n}_proj")))
      plain(f"{p}.mlp.{n}_proj.bias", getattr(mlp, f"{n}_bias"))
    plain(f"{p}.input_layernorm.weight", layer.input_layernorm.scale)
    plain(f"{p}.post_attention_layernorm.weight", layer.post_attention_layernorm.scale)
  rows.append(hf.Tensor("model.norm.weight", model.norm.scale))
  if not cfg.tie_word_embeddings:
    rows.append(hf.linear("lm_head.weight", model.lm_head))
  return rows


# Rotary buffers (old checkpoints saved them per layer) and the tied LM head: read and dropped.
HF_IGNORED = (r"model\.rotary_emb\.(original_)?inv_freq",
              r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight")


def hf_aliases(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Adds the tied `lm_head.weight` HF's own state dict has, so an export mirrors it."""
  out = dict(tensors)
  out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
  return out

"""Llama / Qwen2 / Qwen3 / Mistral tests: golden logits vs transformers' PyTorch models, HF export and
import, packing, KV-cache decoding (greedy and sampled), bfloat16, presets."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxdistill.models import decode, families, llama, stack
from jaxdistill.models import hf as hf_io
from tests import hf_utils

VOCAB = 97
ROWS, LENGTH = 3, 12  # one batch shape for the forward tests (and the naive decoder): one compile
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _hf_config(kind: str):
  common = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
  if kind == "llama":
    # GQA, untied, every bias; theta 100 with original length 32 puts the 4 rotary
    # frequencies in all three llama3 bands (kept, blended, divided by factor).
    return transformers.LlamaConfig(**common, num_key_value_heads=2, rope_theta=100.0,
                                    rope_scaling=dict(LLAMA3_ROPE), attention_bias=True,
                                    mlp_bias=True, tie_word_embeddings=False)
  if kind == "mistral":  # Mistral-shaped without a sliding window
    return transformers.MistralConfig(**common, num_key_value_heads=2, sliding_window=None,
                                      rope_theta=1000.0, tie_word_embeddings=True)
  if kind == "qwen2":
    return transformers.Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=True)
  return transformers.Qwen3Config(**common, num_key_value_heads=2, head_dim=16,
                                  tie_word_embeddings=False)


@functools.cache
def _hf_model(kind: str):
  """A tiny HF model with every parameter random (HF's init leaves biases at 0 and norms at
  1, which would not test their mapping); float32, eval mode."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(_hf_config(kind)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_((0.1 if name.endswith("bias") else 0.3) * torch.randn_like(p))
  return model



def _jax_from_hf(hf, **overrides) -> llama.Llama:
  config = llama.config_from_hf(hf.config.to_dict(), **overrides)
  model = nnx.eval_shape(lambda: llama.build(config, nnx.Rngs(0)))  # no random init compiles
  hf_io.load_weights(model, hf_utils.torch_state(hf))
  return model


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "mistral"])
def golden(request):
  hf = _hf_model(request.param)
  return hf, _jax_from_hf(hf)


@pytest.fixture(scope="module")
def llama_pair():
  hf = _hf_model("llama")
  return hf, _jax_from_hf(hf)


@nnx.jit
def _forward(model, batch):
  return model(batch)


def _logits(model, batch) -> np.ndarray:
  return np.asarray(_forward(model, batch)["logits"])


def _right_padded(rows) -> dict[str, np.ndarray]:
  ids = np.zeros((ROWS, LENGTH), np.int32)
  seg = np.zeros((ROWS, LENGTH), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], seg[i, :len(r)] = r, 1
  return {"decoder_input_ids": ids, "decoder_segment_ids": seg}


def _hf_logits(hf, ids, mask) -> np.ndarray:
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()


def _rows(seed, lengths, low=3):
  rng = np.random.default_rng(seed)
  return [rng.integers(low, VOCAB, size=n) for n in lengths]


# ----------------------------------------------------------------- config and golden logits


def test_config_from_hf(golden):
  hf, model = golden
  cfg, c = model.config, hf.config
  assert cfg.model_type == c.model_type
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  assert (cfg.num_key_value_heads, cfg.head_dim) == (c.num_key_value_heads, head_dim)
  assert cfg.tie_word_embeddings == c.tie_word_embeddings
  assert cfg.qk_norm == (c.model_type == "qwen3")
  assert (cfg.attention_bias, cfg.attention_out_bias) == {
      "llama": (True, True), "qwen2": (True, False), "qwen3": (False, False),
      "mistral": (False, False)}[c.model_type]
  # transformers v5 keeps rope_theta (and the scaling) under `rope_parameters`.
  assert cfg.rope_theta == c.rope_parameters["rope_theta"]
  if c.model_type == "llama":
    assert dict(cfg.rope_scaling) == LLAMA3_ROPE and cfg.mlp_bias
  # The v4 spelling (top-level rope_theta + rope_scaling) reads the same.
  v4 = {k: v for k, v in c.to_dict().items() if k != "rope_parameters"}
  v4.update(rope_theta=cfg.rope_theta, rope_scaling=None if cfg.rope_scaling is None
            else {**dict(cfg.rope_scaling), "type": "llama3"})
  assert llama.config_from_hf(v4) == cfg
  assert llama.config_from_hf(llama.hf_config(cfg)) == cfg


def test_rope_inv_freq_matches_hf(golden):
  hf, model = golden
  ours = llama.rope_inv_freq(model.config)
  np.testing.assert_allclose(ours, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6, atol=0)
  if model.config.rope_scaling is not None:
    plain = llama.rope_inv_freq(dataclasses.replace(model.config, rope_scaling=None))
    kept, changed = ours == plain, ours != plain
    assert kept.any() and changed.sum() >= 2  # scaling matters at this size


def test_unsupported_configs_raise():
  with pytest.raises(ValueError, match="unsupported rope scaling 'yarn'"):
    llama.LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
  with pytest.raises(ValueError, match="sliding-window"):
    llama.config_from_hf({"model_type": "mistral", "sliding_window": 4096,
                          "max_position_embeddings": 32768})
  with pytest.raises(ValueError, match="hidden_act"):
    llama.config_from_hf({"model_type": "llama", "hidden_act": "gelu"})
  with pytest.raises(ValueError, match="qwen2"):
    llama.hf_config(llama.LlamaConfig(model_type="qwen2"))  # Qwen2 always has q/k/v biases


def test_golden_logits(golden):
  hf, model = golden
  batch = _right_padded(_rows(0, [12, 7, 3]))
  ref = _hf_logits(hf, batch["decoder_input_ids"], batch["decoder_segment_ids"])
  out = _forward(model, batch)
  logits = np.asarray(out["logits"])
  assert logits.dtype == np.float32 and logits.shape == ref.shape == (ROWS, LENGTH, VOCAB)
  assert out["decoder_hidden"].shape == (ROWS, LENGTH, 32)
  assert np.isfinite(logits).all()  # padding positions too
  valid = batch["decoder_segment_ids"].astype(bool)
  np.testing.assert_allclose(logits[valid], ref[valid], atol=1e-4, rtol=0)
  assert np.abs(ref[valid]).max() > 1.0  # a meaningful scale for the tolerance


def test_hf_state_dict_roundtrip(golden):
  hf, model = golden
  exported = hf_io.state_dict(model)
  reference = hf_utils.torch_state(hf)
  hf_utils.assert_state_dicts_equal(exported, reference)


def test_load_rejects_missing_and_unexpected(llama_pair):
  hf, model = llama_pair
  sd = hf_utils.torch_state(hf)
  del sd["model.layers.1.self_attn.o_proj.bias"]
  with pytest.raises(ValueError, match="o_proj.bias"):
    hf_io.load_weights(model, sd)
  sd = {**hf_utils.torch_state(hf), "model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)}
  with pytest.raises(ValueError, match="q_norm"):
    hf_io.load_weights(model, sd)


def test_export_and_import(golden, tmp_path):
  """hf.save -> transformers' AutoModelForCausalLM and hf.load give the same logits."""
  hf, model = golden
  batch = _right_padded(_rows(1, [12, 9, 5]))
  ids, mask = batch["decoder_input_ids"], batch["decoder_segment_ids"]
  valid = mask.astype(bool)
  path = str(tmp_path / "export")
  hf_io.save(model, path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
  assert type(reloaded) is type(hf)
  if model.config.tie_word_embeddings:
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
  np.testing.assert_allclose(reloaded.model.rotary_emb.inv_freq.numpy(),
                             hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-7)
  ref = _hf_logits(hf, ids, mask)
  np.testing.assert_allclose(_hf_logits(reloaded, ids, mask)[valid], ref[valid], atol=1e-5, rtol=0)
  ours = families.load(path)
  assert ours.config == model.config
  np.testing.assert_allclose(_logits(ours, batch)[valid], ref[valid], atol=1e-4, rtol=0)


def test_scanned_layers_golden_export_and_import(golden, tmp_path):
  """scan_layers (with remat) loads the HF weights into stacked layers: the same logits as transformers,
  the exact state dict back, and an export identical to the unscanned model's, which an unscanned model
  imports with the same logits."""
  hf, model = golden
  scanned = _jax_from_hf(hf, scan_layers=True, remat="dots")
  assert isinstance(scanned.layers, stack.Stacked) and scanned.layers.layer.mlp.up_proj.shape[0] == 2
  batch = _right_padded(_rows(1, [12, 9, 5]))
  valid = batch["decoder_segment_ids"].astype(bool)
  ref = _hf_logits(hf, batch["decoder_input_ids"], batch["decoder_segment_ids"])
  np.testing.assert_allclose(_logits(scanned, batch)[valid], ref[valid], atol=1e-4, rtol=0)
  hf_utils.assert_state_dicts_equal(hf_io.state_dict(scanned), hf_utils.torch_state(hf))
  hf_io.save(scanned, str(tmp_path / "scanned"))
  hf_io.save(model, str(tmp_path / "plain"))
  hf_utils.assert_exports_identical(tmp_path / "scanned", tmp_path / "plain")
  unscanned = families.load(str(tmp_path / "scanned"))
  assert unscanned.config == model.config and isinstance(unscanned.layers, nnx.List)
  np.testing.assert_allclose(_logits(unscanned, batch)[valid], ref[valid], atol=1e-4, rtol=0)


# ----------------------------------------------------------------- packing


def test_packed_equals_separate_rows(llama_pair):
  _, model = llama_pair
  a, b = _rows(2, [5, 4])
  separate = _logits(model, _right_padded([a, b]))
  packed_batch = _right_padded([np.r_[a, b]])
  packed_batch["decoder_segment_ids"][0, :9] = np.r_[np.ones(5), 2 * np.ones(4)]
  packed_batch["decoder_positions"] = np.zeros((ROWS, LENGTH), np.int32)
  packed_batch["decoder_positions"][0, :9] = np.r_[np.arange(5), np.arange(4)]
  packed = _logits(model, packed_batch)
  assert np.isfinite(packed).all()  # the all-padding rows too
  np.testing.assert_allclose(packed[0, :5], separate[0, :5], atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[0, 5:9], separate[1, :4], atol=1e-5, rtol=0)


def test_default_segments_and_positions(llama_pair):
  """Without segment ids or positions every token is real (id 0 included) and 0..L-1."""
  _, model = llama_pair
  batch = _right_padded([np.r_[r[:6], 0, r[6:]] for r in _rows(3, [11, 11, 11])])
  explicit = {**batch, "decoder_segment_ids": np.ones((ROWS, LENGTH), np.int32),
              "decoder_positions": np.broadcast_to(np.arange(LENGTH, dtype=np.int32),
                                                   (ROWS, LENGTH))}
  implicit = {"decoder_input_ids": batch["decoder_input_ids"]}
  ref = _logits(model, explicit)
  # (Separately compiled programs: equal up to float reassociation.)
  np.testing.assert_allclose(_logits(model, implicit), ref, atol=1e-5, rtol=0)
  logits, hidden = nnx.jit(lambda m, x: m.forward(x))(model, batch["decoder_input_ids"])
  np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=0)
  assert hidden.shape == (ROWS, LENGTH, 32)


# ----------------------------------------------------------------- decoding

PROMPT, NEW = 7, 5  # PROMPT + NEW == LENGTH: the naive decoder reuses the forward's compile


def _left_padded(rows) -> tuple[np.ndarray, np.ndarray]:
  ids = np.zeros((len(rows), PROMPT), np.int32)
  mask = np.zeros((len(rows), PROMPT), np.int32)
  for i, r in enumerate(rows):
    ids[i, PROMPT - len(r):], mask[i, PROMPT - len(r):] = r, 1
  return ids, mask


def _naive_greedy(model, ids, mask, eos_id):
  """Greedy decoding re-running the uncached forward on prompt + generated tokens each step
  (causal, so the not-yet-generated tail of the buffer does not matter)."""
  buf = np.zeros((ROWS, LENGTH), np.int32)
  buf[:, :PROMPT] = ids
  seg = np.ones((ROWS, LENGTH), np.int32)
  seg[:, :PROMPT] = mask
  positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
  out = np.zeros((ROWS, NEW), np.int32)
  done = np.zeros(ROWS, bool)
  for t in range(NEW):
    logits = _logits(model, {"decoder_input_ids": buf, "decoder_segment_ids": seg,
                             "decoder_positions": positions})
    nxt = np.where(done, 0, logits[:, PROMPT - 1 + t].argmax(-1))
    out[:, t] = nxt
    done |= nxt == eos_id
    if PROMPT + t < LENGTH:
      buf[:, PROMPT + t] = nxt
  return out


@pytest.fixture(scope="module")
def prompts():
  return _left_padded(_rows(4, [7, 4, 1]))


def _generate(model, prompts, **kw):
  out = np.asarray(decode.causal_lm_generate(model, *prompts, max_new_tokens=NEW, **kw))
  assert out.dtype == np.int32 and out.shape == (ROWS, NEW)
  return out


def test_cached_decode_matches_uncached(llama_pair, prompts):
  _, model = llama_pair
  free = _generate(model, prompts, eos_id=-1)
  np.testing.assert_array_equal(free, _naive_greedy(model, *prompts, -1))
  eos = int(free[0, 1])  # row 0 stops after 2 tokens
  got = _generate(model, prompts, eos_id=eos)
  np.testing.assert_array_equal(got, _naive_greedy(model, *prompts, eos))
  first = (got[0] == eos).argmax()
  assert first <= 1 and (got[0, first + 1:] == 0).all()
  # Several EOS ids (Llama 3 style): the earliest one in each row ends it.
  both = _generate(model, prompts, eos_id=[-5, eos])
  np.testing.assert_array_equal(both, got)


def test_scanned_cached_decode_matches_unscanned(llama_pair, prompts):
  """The stacked KV cache ([layers, B, KV, S, Dh]) decodes the same tokens as the per-layer one."""
  hf, model = llama_pair
  scanned = _jax_from_hf(hf, scan_layers=True)
  cache = scanned.init_cache(jnp.asarray(prompts[1]), 9)
  assert cache["layers"]["k"].shape == (2, ROWS, 2, 9, 8)
  free = _generate(model, prompts, eos_id=-1)
  np.testing.assert_array_equal(_generate(scanned, prompts, eos_id=-1), free)
  eos = int(free[0, 1])
  np.testing.assert_array_equal(_generate(scanned, prompts, eos_id=eos), _generate(model, prompts, eos_id=eos))


def test_generate_matches_hf(llama_pair, prompts):
  hf, model = llama_pair
  eos = int(_generate(model, prompts, eos_id=-1)[2, 2])
  ours = np.asarray(decode.causal_lm_generate(nnx.split(model), *prompts, max_new_tokens=NEW,
                                              eos_id=eos))
  ids, mask = prompts
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=NEW,
                      do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=0).numpy()
  ref = ref[:, PROMPT:]
  ref = np.pad(ref, ((0, 0), (0, NEW - ref.shape[1])))
  np.testing.assert_array_equal(ours, ref)
  assert (ours == eos).any()


def test_sampling(llama_pair, prompts):
  _, model = llama_pair
  split = nnx.split(model)  # one traversal for the repeated calls
  greedy = _generate(split, prompts, eos_id=-1)

  def sample(seed, **kw):
    return _generate(split, prompts, eos_id=-1, rng=jax.random.key(seed), **kw)

  hot = sample(0, temperature=3.0)
  np.testing.assert_array_equal(hot, sample(0, temperature=3.0))
  assert not np.array_equal(hot, sample(1, temperature=3.0))
  assert ((hot >= 0) & (hot < VOCAB)).all()
  np.testing.assert_array_equal(sample(1, temperature=3.0, top_k=1), greedy)
  with pytest.raises(ValueError, match="rng"):
    decode.causal_lm_generate(split, *prompts, max_new_tokens=NEW, eos_id=-1, temperature=1.0)


def test_sampler_distribution():
  """The sampler's frequencies follow softmax(logits / T) restricted by top-k, then top-p
  (checked through `greedy_loop` with a model-free step function)."""
  base = jnp.log(jnp.asarray([0.4, 0.3, 0.15, 0.1, 0.05]))
  rows = 20000

  def step_fn(params, cache, token, position):
    return jnp.broadcast_to(base, (rows, 5)), cache

  # (temperature, top_k, top_p) -> expected frequencies; one program draws them all.
  p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
  cases = [
      ((1.0, 0, 1.0), p),
      ((2.0, 0, 1.0), p ** 0.5 / (p ** 0.5).sum()),
      ((1.0, 3, 1.0), np.r_[p[:3] / 0.85, 0, 0]),
      # top_p=0.75: 0.4 + 0.3 < 0.75, so the third token is still needed.
      ((1.0, 0, 0.75), np.r_[p[:3] / 0.85, 0, 0]),
      ((1.0, 2, 0.75), np.r_[p[:2] / 0.7, 0, 0, 0]),  # top-k first
  ]

  @jax.jit
  def draw(rng):
    out = []
    for i, ((temperature, top_k, top_p), _) in enumerate(cases):
      select = decode.sampler(jax.random.fold_in(rng, i), temperature=temperature,
                              top_k=top_k, top_p=top_p)
      out.append(decode.greedy_loop(step_fn, None, None, batch_size=rows, max_len=1,
                                    eos_id=-1, select=select)[:, 0])
    return jnp.stack(out)

  draws = np.asarray(draw(jax.random.key(0)))
  for tokens, (args, expected) in zip(draws, cases):
    np.testing.assert_allclose(np.bincount(tokens, minlength=5) / rows, expected, atol=0.015,
                               err_msg=str(args))


def test_seq2seq_sampling_path():
  """The same `select` drives T5's loop: top_k=1 sampling is greedy decoding."""
  from jaxdistill.models import t5
  cfg = t5.get_config("t5-tiny", vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1)
  model = nnx.eval_shape(lambda: t5.T5(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  for row in t5.hf_mapping(model):  # random weights without an init compile
    row.param.set_value(jnp.asarray(rng.normal(0, 0.3, row.param.shape), jnp.float32))
  enc = np.zeros((2, 6), np.int32)
  enc[0], enc[1, :3] = _rows(6, [6, 3])
  seg = (enc != 0).astype(np.int32)
  greedy = np.asarray(decode.greedy_decode(model, enc, seg, max_len=4, eos_id=-1))
  graphdef, state = nnx.split(model)
  sampled = decode.seq2seq_generate(graphdef, state, enc, seg, jax.random.key(3), jnp.float32(2.0),
                                    max_len=4, eos_id=-1, top_k=1)
  np.testing.assert_array_equal(sampled, greedy)


# ----------------------------------------------------------------- dtype, init, presets


def test_bfloat16_activations(llama_pair, prompts):
  _, f32 = llama_pair
  cfg = dataclasses.replace(f32.config, dtype="bfloat16")
  model = nnx.eval_shape(lambda: llama.build(cfg, nnx.Rngs(0)))
  nnx.update(model, nnx.state(f32))  # the same float32 parameters
  batch = _right_padded(_rows(5, [12, 7, 3]))
  out = _forward(model, batch)
  assert out["logits"].dtype == jnp.float32 and out["decoder_hidden"].dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  valid = batch["decoder_segment_ids"].astype(bool)
  logits, ref = np.asarray(out["logits"])[valid], _logits(f32, batch)[valid]
  assert np.isfinite(logits).all()
  # bfloat16 keeps ~3 significant digits through 2 layers of these (large) random weights.
  assert np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()
  tokens = _generate(model, prompts, eos_id=-1)  # bfloat16 KV cache
  assert ((tokens >= 0) & (tokens < VOCAB)).all()


_AXES = {"vocab", "embed", "mlp", "heads", "kv_heads", "kv"}


def test_init_and_logical_axes():
  """A real (not HF-loaded) init: every Param annotated; HF's init scales."""
  cfg = llama.get_config("llama-tiny", attention_bias=True, mlp_bias=True, qk_norm=True,
                         tie_word_embeddings=False, model_type="qwen3")
  model = llama.build(cfg, nnx.Rngs(jax.random.key(0, impl="rbg")))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  # embed, lm_head, final norm; per layer: 4 proj + 4 bias + 2 qk norms + 3 mlp + 3 bias + 2 norms
  assert len(flat) == 3 + 2 * 18
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var[...].ndim, path
    assert set(names) <= _AXES, (path, names)
  att = model.layers[0].self_attn
  assert att.q_proj.shape == (64, 4, 16) and att.k_proj.shape == (64, 2, 16)
  assert abs(float(np.asarray(att.q_proj[...]).std()) - 0.02) < 0.003
  np.testing.assert_array_equal(att.k_bias[...], np.zeros((2, 16)))
  np.testing.assert_array_equal(att.q_norm.scale[...], np.ones(16))
  # The mapping covers every parameter exactly once.
  assert len(llama.hf_mapping(model)) == len(flat)


def test_eager_sharding_under_mesh():
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"))
  rules = (("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
           ("vocab", "tensor"), ("kv", None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = nnx.eval_shape(lambda: llama.build(llama.get_config("llama-tiny"), nnx.Rngs(0)))
  k = model.layers[0].self_attn.k_proj.get_value()  # abstract: no compile needed
  assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


# Published parameter counts of the checkpoints the presets describe.
_PRESET_PARAMS = {"smollm2-135m": 134_515_008, "qwen2.5-0.5b": 494_032_768,
                  "qwen3-0.6b": 596_049_920, "llama-3.2-1b": 1_235_814_400}


@pytest.mark.parametrize("preset", sorted(_PRESET_PARAMS))
def test_presets(preset):
  """Abstract models only: parameter counts, and the names / shapes transformers builds from
  our exported config (on the meta device: nothing is allocated)."""
  cfg = llama.get_config(preset)
  model = nnx.eval_shape(lambda: llama.build(cfg, nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(int(np.prod(x.shape)) for x in leaves) == _PRESET_PARAMS[preset]
  hf_cfg = transformers.AutoConfig.for_model(**llama.hf_config(cfg))
  with torch.device("meta"):
    ref = transformers.AutoModelForCausalLM.from_config(hf_cfg)
  assert type(ref).__name__ == llama.hf_config(cfg)["architectures"][0]
  shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  rows = llama.hf_mapping(model)
  assert {r.name for r in rows} == set(shapes) - ({"lm_head.weight"} if cfg.tie_word_embeddings
                                                   else set())
  for r in rows:  # our layout has the HF tensor's elements
    assert int(np.prod(r.param.shape)) == int(np.prod(shapes[r.name])), r.name
  assert llama.config_from_hf(hf_cfg.to_dict()) == cfg

"""T5 tests: golden logits vs transformers' PyTorch T5, KV-cache decoding, packing, sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxdistill.models import decode, families, stack, t5
from jaxdistill.models import hf as hf_io
from tests import hf_utils

VOCAB = 97
# Few buckets and a short max distance so short test sequences hit the log-spaced buckets.
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20)


@functools.cache
def _hf_model(feed_forward_proj: str, tied: bool):
  """A tiny random HF T5ForConditionalGeneration (float32, eval mode: dropout off)."""
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
      num_decoder_layers=3, relative_attention_num_buckets=8,
      relative_attention_max_distance=20, dropout_rate=0.1,
      feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not tied:
    # transformers v5 ties lm_head to shared even for v1.1 configs; untie it explicitly so
    # the test exercises a separate LM head.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 32 ** -0.5)
  return model


def _jax_from_hf(hf, **overrides) -> t5.T5:
  config = t5.config_from_hf(hf.config.to_dict(), **overrides)
  # Abstract model: weights are loaded without materialising (and compiling) a random init.
  model = nnx.eval_shape(lambda: t5.T5(config, rngs=nnx.Rngs(1)))
  hf_io.load_weights(model, {k: v.detach().numpy() for k, v in hf.state_dict().items()})
  return model


@pytest.fixture(scope="module", params=[("gated-gelu", False), ("relu", True)],
                ids=["v1.1-untied", "orig-tied"])
def golden(request):
  hf = _hf_model(*request.param)
  return hf, _jax_from_hf(hf)


@nnx.jit
def _logits(model, batch, rngs=None):
  return model(batch, rngs=rngs)["logits"]


def _padded(rows, length):
  ids = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  return ids


def _random_rows(rng, lengths, low=2):
  return [rng.integers(low, VOCAB, size=n) for n in lengths]


ROWS, ENC_LEN, DEC_LEN = 3, 12, 9  # one batch shape for all forward tests: one compile


def _batch(enc_rows, dec_rows, enc_seg=None, enc_pos=None, dec_seg=None, dec_pos=None):
  """A full Batch dict padded to the shared shape; segments default to 1 over each row's
  tokens, positions to 0.. (decoder rows include their start token 0)."""
  def seg(rows):
    return [np.ones(len(r)) for r in rows]

  def pos(rows):
    return [np.arange(len(r)) for r in rows]

  enc_rows = list(enc_rows) + [[]] * (ROWS - len(enc_rows))
  dec_rows = list(dec_rows) + [[]] * (ROWS - len(dec_rows))
  return {
      "encoder_input_ids": _padded(enc_rows, ENC_LEN),
      "encoder_segment_ids": _padded(enc_seg or seg(enc_rows), ENC_LEN),
      "encoder_positions": _padded(enc_pos or pos(enc_rows), ENC_LEN),
      "decoder_input_ids": _padded(dec_rows, DEC_LEN),
      "decoder_segment_ids": _padded(dec_seg or seg(dec_rows), DEC_LEN),
      "decoder_positions": _padded(dec_pos or pos(dec_rows), DEC_LEN),
  }


@pytest.fixture(scope="module")
def tiny_model():
  """A random model with 2+3 layers (HF's init, loaded: no JAX init compiles).

  Its dropout (0.1) only runs when a call passes rngs."""
  return _jax_from_hf(_hf_model("gated-gelu", False))


# ----------------------------------------------------------------- golden logits


def test_config_from_hf(golden):
  hf, model = golden
  cfg = model.config
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 3)
  assert cfg.tie_word_embeddings == hf.config.scale_decoder_outputs
  assert cfg.feed_forward_proj == hf.config.feed_forward_proj


def _golden_batch_and_reference(hf):
  rng = np.random.default_rng(0)
  batch = _batch(_random_rows(rng, [12, 7, 3]),
                 [np.r_[0, r] for r in _random_rows(rng, [8, 4, 1])])
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(batch["encoder_input_ids"], dtype=torch.long),
             attention_mask=torch.tensor(batch["encoder_segment_ids"]),
             decoder_input_ids=torch.tensor(batch["decoder_input_ids"], dtype=torch.long),
             decoder_attention_mask=torch.tensor(batch["decoder_segment_ids"])).logits.numpy()
  return batch, ref


def test_golden_logits(golden):
  hf, model = golden
  batch, ref = _golden_batch_and_reference(hf)
  dec_mask = batch["decoder_segment_ids"]
  logits = np.asarray(_logits(model, batch))
  assert logits.dtype == np.float32 and logits.shape == ref.shape
  assert np.isfinite(logits).all()  # padding rows too
  valid = dec_mask.astype(bool)
  np.testing.assert_allclose(logits[valid], ref[valid], atol=1e-4, rtol=0)


def test_hf_state_dict_roundtrip(golden):
  hf, model = golden
  exported = hf_io.state_dict(model)
  for name, value in hf.state_dict().items():
    np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)


def test_scanned_layers_golden_export_and_import(golden, tmp_path):
  """scan_layers (with remat) loads the HF weights into stacked encoder and decoder layers: the same
  logits as transformers, the exact state dict back, and an export identical to the unscanned model's,
  which an unscanned model imports with the same logits."""
  hf, model = golden
  scanned = _jax_from_hf(hf, scan_layers=True, remat="full")
  assert isinstance(scanned.encoder.layers, stack.Stacked) and len(scanned.decoder.layers) == 3
  batch, ref = _golden_batch_and_reference(hf)
  valid = batch["decoder_segment_ids"].astype(bool)
  np.testing.assert_allclose(np.asarray(_logits(scanned, batch))[valid], ref[valid], atol=1e-4, rtol=0)
  # (test_hf_state_dict_roundtrip: the unscanned model's state dict is HF's, tensor for tensor.)
  hf_utils.assert_state_dicts_equal(hf_io.state_dict(scanned), hf_io.state_dict(model))
  hf_io.save(scanned, str(tmp_path / "scanned"))
  hf_io.save(model, str(tmp_path / "plain"))
  hf_utils.assert_exports_identical(tmp_path / "scanned", tmp_path / "plain")
  unscanned = families.load(str(tmp_path / "scanned"))
  assert unscanned.config == model.config and isinstance(unscanned.decoder.layers, nnx.List)
  np.testing.assert_allclose(np.asarray(_logits(unscanned, batch))[valid], ref[valid], atol=1e-4, rtol=0)


def test_load_rejects_missing_weights(golden):
  hf, model = golden
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  del sd["decoder.block.1.layer.2.layer_norm.weight"]
  with pytest.raises(ValueError, match="layer_norm"):
    hf_io.load_weights(model, sd)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 8, 20), (False, 8, 20)])
def test_relative_position_buckets_match_hf(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  ours = t5.relative_position_buckets(rel, bidirectional=bidirectional,
                                      num_buckets=num_buckets, max_distance=max_distance)
  np.testing.assert_array_equal(ours, ref)


# ----------------------------------------------------------------- decoding


def _naive_greedy(model, enc_rows, eos_id):
  """Greedy decoding re-running the full (uncached) forward each step (causal, so the
  not-yet-decoded tail of the decoder input does not matter)."""
  dec = np.zeros((len(enc_rows), DEC_LEN), np.int32)  # column 0 = start token 0
  out = np.zeros_like(dec)
  done = np.zeros(len(enc_rows), bool)
  for t in range(DEC_LEN):
    logits = np.asarray(_logits(model, _batch(enc_rows, list(dec))))
    nxt = np.where(done, 0, logits[:, t].argmax(-1))
    out[:, t] = nxt
    done |= nxt == eos_id
    if t + 1 < DEC_LEN:
      dec[:, t + 1] = nxt
  return out


def _greedy(model, enc_rows, eos_id):
  enc = _batch(enc_rows, [])["encoder_input_ids"]
  out = np.asarray(decode.greedy_decode(model, enc, max_len=DEC_LEN, eos_id=eos_id))
  assert out.dtype == np.int32 and out.shape == (ROWS, DEC_LEN)
  return out


def test_cached_decode_matches_uncached(tiny_model):
  enc_rows = _random_rows(np.random.default_rng(1), [12, 4, 1])
  free = _greedy(tiny_model, enc_rows, -1)
  np.testing.assert_array_equal(free, _naive_greedy(tiny_model, enc_rows, -1))
  eos = int(free[0, 3])  # row 0 stops early, others may not
  got = _greedy(tiny_model, enc_rows, eos)
  np.testing.assert_array_equal(got, _naive_greedy(tiny_model, enc_rows, eos))
  first = (got[0] == eos).argmax()
  assert first <= 3 and (got[0, first + 1:] == 0).all()


def test_scanned_cached_decode_matches_unscanned(tiny_model):
  """The stacked cache (self and cross k / v with a leading layer axis) decodes the same tokens."""
  scanned = _jax_from_hf(_hf_model("gated-gelu", False), scan_layers=True)
  enc_rows = _random_rows(np.random.default_rng(1), [12, 4, 1])
  enc = _batch(enc_rows, [])["encoder_input_ids"]
  cache = scanned.init_cache(scanned.encode(enc), jnp.asarray(enc != 0, jnp.int32), DEC_LEN)
  assert cache["layers"]["k"].shape == (3, ROWS, 4, DEC_LEN, 8)
  assert cache["layers"]["cross_k"].shape == (3, ROWS, 4, ENC_LEN, 8)
  free = _greedy(tiny_model, enc_rows, -1)
  np.testing.assert_array_equal(_greedy(scanned, enc_rows, -1), free)
  eos = int(free[0, 3])
  np.testing.assert_array_equal(_greedy(scanned, enc_rows, eos), _greedy(tiny_model, enc_rows, eos))


def test_decode_matches_hf_generate(golden):
  hf, model = golden
  enc_rows = _random_rows(np.random.default_rng(2), [11, 5, 2])
  eos = int(_greedy(model, enc_rows, -1)[1, 2])
  ours = _greedy(model, enc_rows, eos)
  enc = _batch(enc_rows, [])["encoder_input_ids"]
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                      attention_mask=torch.tensor((enc != 0).astype(np.int64)),
                      max_new_tokens=DEC_LEN, do_sample=False, num_beams=1,
                      decoder_start_token_id=0, eos_token_id=eos, pad_token_id=0,
                      # HF sizes its KV cache by the encoder depth; ours has 2+3 layers.
                      use_cache=False).numpy()
  ref = ref[:, 1:]  # drop the start token
  ref = np.pad(ref, ((0, 0), (0, DEC_LEN - ref.shape[1])))
  np.testing.assert_array_equal(ours, ref)


# ----------------------------------------------------------------- packing, dropout, dtype


def _pair():
  rng = np.random.default_rng(3)
  enc_a, enc_b = _random_rows(rng, [6, 5])
  dec_a, dec_b = _random_rows(rng, [3, 2])
  return enc_a, enc_b, np.r_[0, dec_a], np.r_[0, dec_b]


def _unpacked_batch():
  """Two examples, each alone in its own padded row; the third row is all padding."""
  enc_a, enc_b, dec_a, dec_b = _pair()
  return _batch([enc_a, enc_b], [dec_a, dec_b])


def test_packed_equals_unpacked(tiny_model):
  enc_a, enc_b, dec_a, dec_b = _pair()
  single = np.asarray(_logits(tiny_model, _unpacked_batch()))
  # Packed: both in row 0, segments 1 and 2, positions restarting at 0, trailing padding.
  packed = np.asarray(_logits(tiny_model, _batch(
      [np.r_[enc_a, enc_b]], [np.r_[dec_a, dec_b]],
      enc_seg=[np.r_[np.ones(6), 2 * np.ones(5)]], enc_pos=[np.r_[np.arange(6), np.arange(5)]],
      dec_seg=[np.r_[np.ones(4), 2 * np.ones(3)]], dec_pos=[np.r_[np.arange(4), np.arange(3)]])))
  assert np.isfinite(packed).all() and np.isfinite(single).all()  # all-padding rows too
  np.testing.assert_allclose(packed[0, :4], single[0, :4], atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[0, 4:7], single[1, :3], atol=1e-5, rtol=0)


def test_dropout_uses_call_rngs(tiny_model):
  batch = _unpacked_batch()
  det = _logits(tiny_model, batch)
  np.testing.assert_array_equal(det, _logits(tiny_model, batch))

  @nnx.jit
  def encode(model, rngs):  # encoder only: dropout programs compile slowly on CPU
    return model.encode(batch["encoder_input_ids"], batch["encoder_segment_ids"], rngs=rngs)

  # rbg keys: XLA:CPU compiles threefry-based dropout ~4x slower (worth using in training).
  a = encode(tiny_model, nnx.Rngs(dropout=jax.random.key(1, impl="rbg")))
  b = encode(tiny_model, nnx.Rngs(dropout=jax.random.key(2, impl="rbg")))
  ref = encode(tiny_model, None)
  assert np.isfinite(a).all() and not np.allclose(a, b) and not np.allclose(a, ref)


def test_bfloat16_activations(tiny_model):
  cfg = dataclasses.replace(tiny_model.config, dtype="bfloat16")
  model = nnx.eval_shape(lambda: t5.T5(cfg, rngs=nnx.Rngs(0)))
  nnx.update(model, nnx.state(tiny_model))  # same float32 params
  batch = _unpacked_batch()
  out = nnx.jit(lambda m, b: m(b))(model, batch)
  assert out["logits"].dtype == jnp.float32 and out["decoder_hidden"].dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  np.testing.assert_allclose(out["logits"], _logits(tiny_model, batch), atol=0.15)


# ----------------------------------------------------------------- sharding metadata

_AXES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}


def test_init_and_logical_axes():
  """A real (not HF-loaded) init: every Param is annotated, and scales follow HF / Mesh-TF."""
  config = t5.T5Config(num_encoder_layers=1, num_decoder_layers=1, **TINY)
  model = t5.T5(config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))  # rbg: faster compiles
  params = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(params)
  # shared, lm_head, 2 relpos, 2 final norms, enc layer (4 attn, 2 norm, 3 ff), dec layer.
  assert len(flat) == 2 + 2 + 2 + (4 + 2 + 3) + (8 + 3 + 3)
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var[...].ndim, path
    assert set(names) <= _AXES, (path, names)
  specs = nnx.to_flat_state(nnx.get_partition_spec(params))
  assert all(len(spec.get_value()) == var[...].ndim for (_, spec), (_, var) in zip(specs, flat))
  q = np.asarray(model.encoder.layers[0].self_attn.q[...])
  assert q.shape == (32, 4, 8) and abs(q.std() * (32 * 8) ** 0.5 - 1) < 0.2
  np.testing.assert_array_equal(model.decoder.final_norm.scale[...], np.ones(32))


def test_eager_sharding_under_mesh():
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"))
  rules = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("kv", None), ("relpos_buckets", None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = nnx.eval_shape(lambda: t5.T5(t5.get_config("t5-tiny", vocab_size=VOCAB),
                                         rngs=nnx.Rngs(0)))
  q = model.encoder.layers[0].self_attn.q.get_value()  # abstract: no compile needed
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)

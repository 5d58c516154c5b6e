"""DeBERTa-v2/v3 tests: golden hidden states vs transformers' DebertaV2Model, HF export and
load, relative-position buckets, packing, bfloat16, sharding metadata."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.deberta_v2 import modeling_deberta_v2

from jaxdistill.models import deberta, families, stack
from jaxdistill.models import hf as hf_io
from tests import hf_utils

VOCAB, LENGTH = 97, 20
COMMON = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 64,
          "layer_norm_eps": 1e-7, "relative_attention": True, "pad_token_id": 0}
VARIANTS = {
    # DeBERTa-v3: 8 log buckets (exact up to |rel| 4), relative positions saturate at 12 < LENGTH.
    "v3": dict(COMMON, position_buckets=8, max_relative_positions=12, pos_att_type=["p2c", "c2p"],
               share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
               type_vocab_size=0, hidden_act="gelu"),
    # v2-style: separate positional projections, absolute positions, token types, no buckets
    # (plain clipping at 6), an embedding projection, legacy "c2p|p2c" string.
    "v2-abs": dict(COMMON, position_buckets=-1, max_relative_positions=6, pos_att_type="c2p|p2c",
                   share_att_key=False, norm_rel_ebd="none", position_biased_input=True,
                   type_vocab_size=2, embedding_size=24, hidden_act="gelu_new"),
}


@functools.cache
def _hf_model(variant: str):
  """A tiny HF DebertaV2Model (eval: dropout off), every weight perturbed from HF's init so
  biases, LayerNorm affine and attention patterns are all non-trivial."""
  torch.manual_seed(0)
  model = transformers.DebertaV2Model(transformers.DebertaV2Config(**VARIANTS[variant])).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model



def _abstract(config: deberta.DebertaConfig) -> deberta.Deberta:
  """A model without materialised (or compiled) random init, to load weights into."""
  return nnx.eval_shape(lambda: deberta.Deberta(config, rngs=nnx.Rngs(0)))


def _jax_from_hf(model, **overrides) -> deberta.Deberta:
  config = deberta.config_from_hf(model.config.to_dict(), **overrides)
  jax_model = _abstract(config)
  hf_io.load_weights(jax_model, hf_utils.torch_state(model))
  return jax_model


@pytest.fixture(scope="module", params=list(VARIANTS))
def golden(request):
  hf = _hf_model(request.param)
  return hf, _jax_from_hf(hf)


@nnx.jit
def _hidden(model, ids, token_types):
  return model(ids, token_type_ids=token_types)


@nnx.jit
def _hidden_packed(model, ids, segments, positions, token_types):
  return model(ids, segments, positions, token_types)


def _padded(rows, length=LENGTH):
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _batch(seed=0):
  """Right-padded ids [3, LENGTH] (lengths 20, 13, 5) and random token types."""
  rng = np.random.default_rng(seed)
  ids = _padded([rng.integers(1, VOCAB, size=n) for n in (LENGTH, 13, 5)])
  return ids, (rng.integers(0, 2, size=ids.shape) * (ids != 0)).astype(np.int32)


def _hf_hidden(model, ids, token_types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(ids != 0, dtype=torch.long),
                 token_type_ids=torch.tensor(token_types, dtype=torch.long)).last_hidden_state.numpy()


# ----------------------------------------------------------------- config / buckets


def test_config_from_hf(golden):
  hf, model = golden
  cfg, ref = model.config, VARIANTS["v3" if hf.config.share_att_key else "v2-abs"]
  assert cfg.pos_att_type == tuple(hf.config.pos_att_type)
  assert cfg.position_buckets == ref["position_buckets"]
  assert cfg.position_biased_input == ref["position_biased_input"]
  assert cfg.embed_dim == ref.get("embedding_size", 32)
  assert deberta.config_from_hf(deberta.hf_config(cfg)) == cfg


def test_conv_layer_rejected():
  with pytest.raises(ValueError, match="ConvLayer"):
    deberta.config_from_hf(dict(VARIANTS["v3"], conv_kernel_size=3))


@pytest.mark.parametrize("buckets,max_pos", [(256, 512), (8, 12), (8, 64), (4, 9), (5, 33), (2, 10)])
def test_log_buckets_match_hf(buckets, max_pos):
  rel = np.arange(-3000, 3001)
  ref = modeling_deberta_v2.make_log_bucket_position(torch.tensor(rel), buckets, max_pos).long().numpy()
  np.testing.assert_array_equal(deberta.log_bucket_position(rel, buckets, max_pos), ref)
  # The clipped lookup table reproduces HF's gather index for every relative position.
  table, t = deberta.relative_index_table(buckets, max_pos)
  np.testing.assert_array_equal(table[np.clip(rel, -t, t) + t],
                                np.clip(ref + buckets, 0, 2 * buckets - 1))


def test_presets_match_hf_shapes():
  """deberta-v3-xsmall / -base: every mapped tensor has HF's shape (meta-device HF model)."""
  # Model cards: xsmall 22M backbone + 48M embeddings, base 86M + 98M.
  for preset, n_params in (("deberta-v3-xsmall", 70e6), ("deberta-v3-base", 184e6)):
    config = deberta.get_config(preset)
    model = _abstract(config)
    with torch.device("meta"):
      ref = transformers.AutoModel.from_config(
          transformers.DebertaV2Config(**deberta.hf_config(config)))
    assert type(ref).__name__ == "DebertaV2Model"
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    rows = deberta.hf_mapping(model)
    assert {r.name for r in rows} == set(shapes), preset
    for r in rows:
      assert jax.eval_shape(r.to_hf, r.param.get_value()).shape == shapes[r.name], r.name
    assert abs(sum(int(np.prod(s)) for s in shapes.values()) / n_params - 1) < 0.01, preset


# ----------------------------------------------------------------- golden outputs


def test_golden_hidden(golden):
  hf, model = golden
  ids, types = _batch()
  ref = _hf_hidden(hf, ids, types)
  out = np.asarray(_hidden(model, ids, types))
  assert out.dtype == np.float32 and out.shape == ref.shape == (3, LENGTH, 32)
  assert np.isfinite(out).all()  # padding positions too
  valid = ids != 0
  np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("extra", [
    {"relative_attention": False, "pos_att_type": ["c2p"]},  # no relative terms, still scaled
    {"pos_att_type": ["c2p"], "share_att_key": False, "position_buckets": 6},
    {"pos_att_type": ["p2c"], "share_att_key": True, "norm_rel_ebd": "layer_norm"},
], ids=["absolute-only", "c2p-only", "p2c-only"])
def test_golden_other_configs(extra):
  hf = transformers.DebertaV2Model(transformers.DebertaV2Config(**{**VARIANTS["v2-abs"], **extra}))
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  model = _jax_from_hf(hf.eval())
  ids, types = _batch(2)
  valid = ids != 0
  np.testing.assert_allclose(np.asarray(_hidden(model, ids, types))[valid],
                             _hf_hidden(hf, ids, types)[valid], atol=1e-4, rtol=0)


def test_hf_state_dict_roundtrip(golden):
  hf, model = golden
  exported = hf_io.state_dict(model)
  ref = hf_utils.torch_state(hf)
  hf_utils.assert_state_dicts_equal(exported, ref)


def test_task_checkpoint_loads(golden):
  """A task model's names ("deberta." prefix), its heads and v3's stray absolute position
  table are read; the base weights land where they belong."""
  hf, model = golden
  tensors = {"deberta." + k: v for k, v in hf_utils.torch_state(hf).items()}
  tensors.update({"classifier.weight": np.zeros((2, 32), np.float32),
                  "pooler.dense.weight": np.zeros((32, 32), np.float32),
                  "mask_predictions.dense.weight": np.zeros((32, 32), np.float32),
                  "deberta.embeddings.position_ids": np.arange(64)[None]})
  tensors.setdefault("deberta.embeddings.position_embeddings.weight", np.zeros((64, 32), np.float32))
  fresh = _abstract(model.config)
  hf_io.load_weights(fresh, tensors)
  for a, b in zip(jax.tree.leaves(nnx.state(fresh)), jax.tree.leaves(nnx.state(model))):
    np.testing.assert_array_equal(a, b)
  tensors["classifier.extra.weight"] = np.zeros(1, np.float32)
  tensors["deberta.encoder.unknown.weight"] = np.zeros(1, np.float32)
  with pytest.raises(ValueError, match="unknown"):
    hf_io.load_weights(fresh, tensors)


def test_export_loads_in_transformers(golden, tmp_path):
  _hf, model = golden
  ids, types = _batch(1)
  ours = np.asarray(_hidden(model, ids, types))
  hf_io.save(model, str(tmp_path / "export"))
  reloaded = transformers.AutoModel.from_pretrained(str(tmp_path / "export")).eval()
  assert type(reloaded).__name__ == "DebertaV2Model"
  valid = ids != 0
  np.testing.assert_allclose(_hf_hidden(reloaded, ids, types)[valid], ours[valid], atol=1e-4, rtol=0)
  loaded = families.load(str(tmp_path / "export"))
  assert loaded.config == model.config
  np.testing.assert_array_equal(np.asarray(_hidden(loaded, ids, types)), ours)


def test_scanned_layers_golden_export_and_import(golden, tmp_path):
  """scan_layers (with remat) loads the HF weights into stacked layers: the same hidden states as
  transformers, the exact state dict back, and an export identical to the unscanned model's, which an
  unscanned model imports with the same outputs."""
  hf, model = golden
  scanned = _jax_from_hf(hf, scan_layers=True, remat="full")
  assert isinstance(scanned.encoder.layers, stack.Stacked)
  assert scanned.encoder.layers.layer.attention.query.kernel.shape == (2, 32, 4, 8)
  ids, types = _batch()
  ref = _hf_hidden(hf, ids, types)
  valid = ids != 0
  np.testing.assert_allclose(np.asarray(_hidden(scanned, ids, types))[valid], ref[valid], atol=1e-4, rtol=0)
  hf_utils.assert_state_dicts_equal(hf_io.state_dict(scanned), hf_utils.torch_state(hf))
  hf_io.save(scanned, str(tmp_path / "scanned"))
  hf_io.save(model, str(tmp_path / "plain"))
  hf_utils.assert_exports_identical(tmp_path / "scanned", tmp_path / "plain")
  unscanned = families.load(str(tmp_path / "scanned"))
  assert unscanned.config == model.config and isinstance(unscanned.encoder.layers, nnx.List)
  np.testing.assert_allclose(np.asarray(_hidden(unscanned, ids, types))[valid], ref[valid], atol=1e-4, rtol=0)


# ----------------------------------------------------------------- packing, dtype, dropout


def test_packed_equals_separate(golden):
  _, model = golden
  rng = np.random.default_rng(3)
  a, b = rng.integers(1, VOCAB, size=11), rng.integers(1, VOCAB, size=8)
  ta, tb = rng.integers(0, 2, size=11), rng.integers(0, 2, size=8)
  ones = functools.partial(np.ones, dtype=np.int32)
  separate = _hidden_packed(model, _padded([a, b, []]), _padded([ones(11), ones(8), []]),
                            _padded([np.arange(11), np.arange(8), []]), _padded([ta, tb, []]))
  packed = _hidden_packed(model, _padded([np.r_[a, b], [], []]),
                          _padded([np.r_[ones(11), 2 * ones(8)], [], []]),
                          _padded([np.r_[np.arange(11), np.arange(8)], [], []]),
                          _padded([np.r_[ta, tb], [], []]))
  separate, packed = np.asarray(separate), np.asarray(packed)
  assert np.isfinite(packed).all() and np.isfinite(separate).all()  # all-padding rows too
  np.testing.assert_allclose(packed[0, :11], separate[0, :11], atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[0, 11:19], separate[1, :8], atol=1e-5, rtol=0)


def test_bfloat16_activations(golden):
  _, model = golden
  bf16 = _abstract(dataclasses.replace(model.config, dtype="bfloat16"))
  nnx.update(bf16, nnx.state(model))  # the same float32 params
  ids, types = _batch()
  out = _hidden(bf16, ids, types)
  assert out.dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  out = np.asarray(out, np.float32)
  assert np.isfinite(out).all()
  valid = ids != 0
  np.testing.assert_allclose(out[valid], np.asarray(_hidden(model, ids, types))[valid], atol=0.15)


def test_dropout_uses_call_rngs():
  model = _jax_from_hf(_hf_model("v3"))
  ids, _types = _batch()

  @nnx.jit
  def run(model, rngs):
    return model(ids, rngs=rngs)

  # rbg keys: XLA:CPU compiles threefry-based dropout much more slowly.
  a = run(model, nnx.Rngs(dropout=jax.random.key(1, impl="rbg")))
  b = run(model, nnx.Rngs(dropout=jax.random.key(2, impl="rbg")))
  ref = run(model, None)
  valid = ids != 0
  assert np.isfinite(a).all() and not np.allclose(a[valid], b[valid])
  assert not np.allclose(a[valid], ref[valid])


# ----------------------------------------------------------------- sharding metadata

_AXES = {"vocab", "embed", "mlp", "heads", "kv", "length", "relpos_buckets", None}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_init_and_logical_axes(variant):
  config = deberta.config_from_hf(VARIANTS[variant])
  model = _abstract(config)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  assert len(flat) == len(deberta.hf_mapping(model))
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.get_value().shape), path
    assert set(names) <= _AXES, (path, names)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"))
  rules = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("kv", None), ("length", None), ("relpos_buckets", None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    sharded = _abstract(config)
  q = sharded.encoder.layers[0].attention.query.kernel.get_value()
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_real_init():
  """A real init of the tiny preset runs and gives HF-like scales (LayerNorm at 1, biases 0)."""
  config = deberta.get_config("deberta-tiny", vocab_size=VOCAB)
  model = deberta.Deberta(config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  q = np.asarray(model.encoder.layers[0].attention.query.kernel[...])
  assert q.shape == (32, 4, 8) and abs(q.std() - 0.02) < 0.004
  np.testing.assert_array_equal(model.encoder.rel_norm.scale[...], np.ones(32))
  np.testing.assert_array_equal(model.encoder.layers[1].ff.wo_bias[...], np.zeros(32))

"""BERT tests: golden outputs vs transformers' PyTorch BertModel / RobertaModel, HF export and
reload, packing, dropout, bfloat16, and the real all-MiniLM-L6-v2 sentence embeddings."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxdistill.models import bert, common, families, stack
from jaxdistill.models import hf as hf_io
from tests import hf_utils

VOCAB = 97
ROWS, LEN = 4, 12  # one batch shape for all forward tests: one compile per model
LENGTHS = [12, 7, 3, 0]  # right padding; the last row is all padding


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
  """HF initialises biases to 0 and LayerNorms to 1/0; random values make every tensor's
  mapping (biases, norm offsets) visible in the outputs."""
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
  return model


@functools.cache
def _hf_model(kind: str):
  """A tiny random HF base model with pooler (float32, eval mode: dropout off)."""
  torch.manual_seed(0)
  common_kw = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 48, "hidden_dropout_prob": 0.1,
               "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12}
  if kind == "bert":
    config = transformers.BertConfig(**common_kw, hidden_act="gelu", max_position_embeddings=LEN,
                                     type_vocab_size=2, pad_token_id=0)
    model = transformers.BertModel(config)
  else:  # positions start at pad_token_id + 1 = 2
    config = transformers.RobertaConfig(**common_kw, hidden_act="gelu_new",
                                        max_position_embeddings=LEN + 2, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = transformers.RobertaModel(config)
  return _randomize(model).eval()



def _jax_from_hf(hf, **overrides) -> bert.Bert:
  config = bert.config_from_hf(hf.config.to_dict(), add_pooler=hf.pooler is not None, **overrides)
  # Abstract model: weights are loaded without materialising (and compiling) a random init.
  model = nnx.eval_shape(lambda: bert.build(config, nnx.Rngs(0)))
  hf_io.load_weights(model, hf_utils.torch_state(hf))
  return model


@pytest.fixture(scope="module", params=["bert", "roberta"])
def golden(request):
  hf = _hf_model(request.param)
  return hf, _jax_from_hf(hf)


@nnx.jit
def _forward(model, ids, token_type_ids):
  """Default segments (ids != pad) and positions (0..L-1), as an unpacked batch."""
  hidden = model(ids, token_type_ids=token_type_ids)
  return hidden, (model.pooled(hidden) if model.config.add_pooler else None)


@nnx.jit
def _forward_packed(model, ids, segment_ids, positions, token_type_ids):
  return model(ids, segment_ids, positions, token_type_ids)


def _batch(rows, types=None):
  """Rows of ids (and token types) right-padded to [ROWS, LEN] with the pad id."""
  ids = np.zeros((ROWS, LEN), np.int32)
  tt = np.zeros((ROWS, LEN), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    if types is not None:
      tt[i, :len(r)] = types[i]
  return ids, tt


def _golden_batch(config: bert.BertConfig):
  rng = np.random.default_rng(0)
  rows = [rng.integers(2, VOCAB, size=n) for n in LENGTHS]  # 0 and 1 are the pad ids
  types = [rng.integers(0, config.type_vocab_size, size=n) for n in LENGTHS]
  ids, tt = _batch(rows, types)
  ids[ids == 0] = config.pad_token_id
  mask = np.zeros((ROWS, LEN), np.int32)
  for i, n in enumerate(LENGTHS):
    mask[i, :n] = 1
  return ids, tt, mask


def _hf_outputs(hf, ids, tt, mask):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(tt, dtype=torch.long))
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _assert_matches(ours, ref, mask):
  hidden, pooled = (np.asarray(x) for x in ours)
  ref_hidden, ref_pooled = ref
  assert hidden.dtype == np.float32 and hidden.shape == ref_hidden.shape
  assert np.isfinite(hidden).all() and np.isfinite(pooled).all()  # the padding row too
  valid = mask.astype(bool)
  np.testing.assert_allclose(hidden[valid], ref_hidden[valid], atol=1e-4, rtol=0)
  rows = valid.any(1)
  np.testing.assert_allclose(pooled[rows], ref_pooled[rows], atol=1e-4, rtol=0)


# ----------------------------------------------------------------- golden outputs, HF I/O


def test_config_from_hf(golden):
  hf, model = golden
  cfg = model.config
  assert cfg.model_type == hf.config.model_type and cfg.add_pooler
  assert cfg.position_offset == (2 if cfg.model_type == "roberta" else 0)
  assert cfg.hidden_act == hf.config.hidden_act and cfg.head_dim == 8


def test_golden_outputs(golden):
  hf, model = golden
  ids, tt, mask = _golden_batch(model.config)
  _assert_matches(_forward(model, ids, tt), _hf_outputs(hf, ids, tt, mask), mask)


def test_hf_state_dict_roundtrip(golden):
  hf, model = golden
  exported = hf_io.state_dict(model)
  ref = hf_utils.torch_state(hf)
  hf_utils.assert_state_dicts_equal(exported, ref)


def test_export_loads_in_transformers_and_back(golden, tmp_path):
  _, model = golden
  path = str(tmp_path / "export")
  hf_io.save(model, path)
  ids, tt, mask = _golden_batch(model.config)
  ours = _forward(model, ids, tt)

  reloaded_hf = transformers.AutoModel.from_pretrained(path).eval()
  expected = transformers.RobertaModel if model.config.model_type == "roberta" else transformers.BertModel
  assert type(reloaded_hf) is expected
  _assert_matches(ours, _hf_outputs(reloaded_hf, ids, tt, mask), mask)

  reloaded = families.load(path)
  assert reloaded.config == model.config  # add_pooler and the position offset survive
  for (a, b) in zip(_forward(reloaded, ids, tt), ours):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scanned_layers_golden_export_and_import(golden, tmp_path):
  """scan_layers (with remat) loads the HF weights into stacked layers: the same outputs as transformers,
  the exact state dict back, and an export identical to the unscanned model's, which an unscanned model
  imports with the same outputs."""
  hf, model = golden
  scanned = _jax_from_hf(hf, scan_layers=True, remat="dots")
  assert isinstance(scanned.layers, stack.Stacked) and scanned.layers.layer.wi.kernel.shape == (2, 32, 48)
  ids, tt, mask = _golden_batch(model.config)
  ref = _hf_outputs(hf, ids, tt, mask)
  _assert_matches(_forward(scanned, ids, tt), ref, mask)
  hf_utils.assert_state_dicts_equal(hf_io.state_dict(scanned), hf_utils.torch_state(hf))
  hf_io.save(scanned, str(tmp_path / "scanned"))
  hf_io.save(model, str(tmp_path / "plain"))
  hf_utils.assert_exports_identical(tmp_path / "scanned", tmp_path / "plain")
  unscanned = families.load(str(tmp_path / "scanned"))
  assert unscanned.config == model.config and isinstance(unscanned.layers, nnx.List)
  _assert_matches(_forward(unscanned, ids, tt), ref, mask)


def test_task_checkpoint_loads_its_encoder(golden):
  """A *ForSequenceClassification checkpoint ("bert." / "roberta." prefixed names, a
  classifier head, RoBERTa without a pooler) loads into the base model."""
  hf, _ = golden
  cls = (transformers.RobertaForSequenceClassification if hf.config.model_type == "roberta"
         else transformers.BertForSequenceClassification)
  task = _randomize(cls(hf.config))
  base = getattr(task, hf.config.model_type)
  config = bert.config_from_hf(hf.config.to_dict(), add_pooler=base.pooler is not None)
  model = nnx.eval_shape(lambda: bert.build(config, nnx.Rngs(0)))
  hf_io.load_weights(model, hf_utils.torch_state(task))
  exported = hf_io.state_dict(model)
  ref = hf_utils.torch_state(base)
  hf_utils.assert_state_dicts_equal(exported, ref)


def test_load_rejects_missing_and_unknown_weights(golden):
  hf, model = golden
  sd = hf_utils.torch_state(hf)
  del sd["encoder.layer.1.output.LayerNorm.bias"]
  with pytest.raises(ValueError, match="missing=.*output.LayerNorm.bias"):
    hf_io.load_weights(model, sd)
  sd = {**hf_utils.torch_state(hf), "encoder.layer.2.output.dense.weight": np.zeros((32, 48), np.float32)}
  with pytest.raises(ValueError, match="unexpected=.*layer.2"):
    hf_io.load_weights(model, sd)


# ----------------------------------------------------------------- packing, dropout, dtype


def test_packed_equals_unpacked(golden):
  _, model = golden
  pad = model.config.pad_token_id
  rng = np.random.default_rng(3)
  a, b = rng.integers(2, VOCAB, size=6), rng.integers(2, VOCAB, size=5)
  ta = np.r_[np.zeros(3), np.ones(3)] if model.config.type_vocab_size > 1 else np.zeros(6)
  tb = np.zeros(5)
  ids, tt = _batch([a, b], [ta, tb])
  ids[2:] = pad
  seg = np.zeros((ROWS, LEN), np.int32)
  seg[0, :6], seg[1, :5] = 1, 1
  single = np.asarray(_forward_packed(model, ids, seg, common.default_positions(ids), tt))

  p_ids, p_tt = _batch([np.r_[a, b]], [np.r_[ta, tb]])
  p_ids[p_ids == 0] = pad
  p_seg, p_pos = np.zeros((ROWS, LEN), np.int32), np.zeros((ROWS, LEN), np.int32)
  p_seg[0, :11] = np.r_[np.ones(6), 2 * np.ones(5)]
  p_pos[0, :11] = np.r_[np.arange(6), np.arange(5)]
  packed = np.asarray(_forward_packed(model, p_ids, p_seg, p_pos, p_tt))
  assert np.isfinite(packed).all() and np.isfinite(single).all()  # all-padding rows too
  np.testing.assert_allclose(packed[0, :6], single[0, :6], atol=1e-5, rtol=0)
  np.testing.assert_allclose(packed[0, 6:11], single[1, :5], atol=1e-5, rtol=0)


def test_dropout_uses_call_rngs():
  model = _jax_from_hf(_hf_model("bert"))
  ids, tt, _ = _golden_batch(model.config)

  @nnx.jit
  def run(model, rngs):
    return model(ids, token_type_ids=tt, rngs=rngs)

  # rbg keys: XLA:CPU compiles threefry-based dropout much more slowly.
  a = run(model, nnx.Rngs(dropout=jax.random.key(1, impl="rbg")))
  b = run(model, nnx.Rngs(dropout=jax.random.key(2, impl="rbg")))
  ref = run(model, None)
  np.testing.assert_allclose(ref, _forward(model, ids, tt)[0], atol=1e-6, rtol=0)  # another program
  assert np.isfinite(a).all() and not np.allclose(a, b) and not np.allclose(a, ref)


def test_bfloat16_activations(golden):
  _, model32 = golden
  cfg = dataclasses.replace(model32.config, dtype="bfloat16")
  model = nnx.eval_shape(lambda: bert.build(cfg, nnx.Rngs(0)))
  nnx.update(model, nnx.state(model32))  # same float32 params
  ids, tt, mask = _golden_batch(cfg)
  hidden, pooled = _forward(model, ids, tt)
  assert hidden.dtype == jnp.bfloat16 and pooled.dtype == jnp.bfloat16
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  ref_hidden, ref_pooled = _forward(model32, ids, tt)
  valid = mask.astype(bool)
  assert np.isfinite(np.asarray(hidden, np.float32)).all()
  np.testing.assert_allclose(np.asarray(hidden, np.float32)[valid], np.asarray(ref_hidden)[valid],
                             atol=0.15, rtol=0)
  np.testing.assert_allclose(np.asarray(pooled, np.float32)[:3], np.asarray(ref_pooled)[:3],
                             atol=0.05, rtol=0)


# ----------------------------------------------------------------- the real all-MiniLM-L6-v2

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar on stage.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "A cat sleeps on the warm windowsill.",
    "JAX compiles numerical Python programs with XLA for accelerators.",
]


def test_all_minilm_l6_v2_sentence_embeddings():
  path = bert.packaged_minilm_dir()
  model = families.load(path)
  assert model.config == bert.get_config("minilm-l6")
  tok = transformers.AutoTokenizer.from_pretrained(path)
  enc = tok(SENTENCES, padding=True, return_tensors="np")
  ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]

  @nnx.jit
  def embed(model, ids, mask, tt):
    return common.mean_pool(model(ids, mask, token_type_ids=tt), mask)

  ours = np.asarray(embed(model, ids, mask, tt))
  ref_model = transformers.BertModel.from_pretrained(path).eval()
  with torch.no_grad():
    hidden = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(tt)).last_hidden_state
  m = torch.tensor(mask, dtype=torch.float32)[..., None]
  ref = ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
  assert ours.shape == (len(SENTENCES), 384)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

  def normalize(x):  # sentence-transformers' Normalize module
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  unit, ref_unit = normalize(ours), normalize(ref)
  np.testing.assert_allclose(unit, ref_unit, atol=1e-4, rtol=0)
  # Real embeddings: paraphrase pairs are each other's nearest neighbours.
  sim = unit @ unit.T
  np.fill_diagonal(sim, -1)
  assert sim[0].argmax() == 1 and sim[2].argmax() == 3


# ----------------------------------------------------------------- init and sharding metadata

_AXES = {"vocab", "embed", "mlp", "heads", "kv", "length", None}


def test_init_and_logical_axes():
  """A real (not HF-loaded) init: every Param is annotated; BERT's normal(0.02) init."""
  config = bert.get_config("bert-tiny", vocab_size=VOCAB, num_hidden_layers=1, add_pooler=True)
  model = bert.build(config, nnx.Rngs(jax.random.key(0, impl="rbg")))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  # 3 embeddings + norm (2), layer: 4 attn dense (8), 2 ffn dense (4), 2 norms (4), pooler (2).
  assert len(flat) == 3 + 2 + 8 + 4 + 4 + 2
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var[...].ndim, path
    assert set(names) <= _AXES, (path, names)
  q = np.asarray(model.layers[0].attention.q.kernel[...])
  assert q.shape == (128, 2, 64) and abs(q.std() / 0.02 - 1) < 0.1
  np.testing.assert_array_equal(model.layers[0].attention.q.bias[...], np.zeros((2, 64)))
  with pytest.raises(ValueError, match="no pooler"):
    no_pooler = dataclasses.replace(config, add_pooler=False)
    nnx.eval_shape(lambda: bert.build(no_pooler, nnx.Rngs(0))).pooled(jnp.zeros((1, 2, 128)))


def test_eager_sharding_under_mesh():
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"))
  rules = (("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("kv", None), ("length", None))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = nnx.eval_shape(lambda: bert.build(bert.get_config("bert-tiny", vocab_size=VOCAB),
                                              nnx.Rngs(0)))
  q = model.layers[0].attention.q.kernel.get_value()  # abstract: no compile needed
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  wi = model.layers[0].wi.kernel.get_value()
  assert wi.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_presets_and_hf_config_validation():
  base = bert.get_config("bert-base")
  assert (base.hidden_size, base.num_hidden_layers, base.head_dim) == (768, 12, 64)
  with pytest.raises(ValueError, match="unknown BertConfig fields"):
    bert.get_config("bert-tiny", hidden=3)
  with pytest.raises(ValueError, match="position_offset"):
    bert.hf_config(dataclasses.replace(base, position_offset=2))  # BERT numbers from 0
  with pytest.raises(ValueError, match="not supported"):
    bert.config_from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})

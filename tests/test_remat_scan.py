"""model.remat and model.scan_layers (models/stack.py) for every student kind: the same loss and gradients
as the plain model with the same weights, a program that does not grow with depth, the stacked axis
unsharded, and the config keys checked and passed through. The golden-logit, HF export / import and
cached-decoding checks of scanned models are in each family's test file (test_scanned_*)."""

import dataclasses
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill import config as config_lib
from jaxdistill import partitioning, workdir
from jaxdistill.models import bert, deberta, families, heads, hf, llama, stack, students, t5
from jaxdistill.objectives import losses
from tests import sharded_models_check
from tests import train_utils as tu

PRESETS = ["llama-tiny", "t5-tiny", "bert-tiny", "deberta-tiny"]  # decoder, seq2seq, encoder + heads
# (remat, scan_layers) checked against the plain model of each preset; the rest of the matrix is slow.
VARIANTS = [("full", False), ("none", True), ("dots", True)]
MORE_VARIANTS = [("dots", False), ("full", True)]
VOCAB = sharded_models_check.TOK.vocab_size


def _model_config(preset: str, remat: str = "none", scan_layers: bool = False, dropout_rate: float = 0.0):
  config = config_lib.defaults()
  tu.set_keys(config, {"model.preset": preset, "model.remat": remat, "model.scan_layers": scan_layers,
                       "model.dropout_rate": dropout_rate, "objective.name": "hybrid"})
  return config


def _student(config):
  spec = students.spec(config.model, VOCAB, num_classes=3)
  return spec, students.build(spec, nnx.Rngs(0))


def _per_layer(state) -> dict[tuple, np.ndarray]:
  """{path: array} with every stacked layer parameter split into one entry per layer, under the path
  the unscanned model has (..., "layers", "layer", ...) -> (..., "layers", i, ...)."""
  out = {}
  for path, value in nnx.to_flat_state(state):
    value = np.asarray(value[...])
    if "layer" in path:  # the stacked module inside a stack.Stacked
      k = path.index("layer")
      out.update({(*path[:k], i, *path[k + 1:]): value[i] for i in range(value.shape[0])})
    else:
      out[path] = value
  return out


def _loss_and_grads(config):
  """(model, loss, per-layer gradients) of the student `config` describes on a packed batch of its kind."""
  spec, model = _student(config)
  terms = losses.objective_terms(config.objective, spec.kind)
  batch = sharded_models_check.batch_for(spec.kind)

  @nnx.jit
  def step(model, batch):
    return nnx.value_and_grad(lambda m: losses.total_loss(terms, m(batch), batch)[0])(model)

  loss, grads = step(model, batch)
  return model, float(loss), _per_layer(grads)


def _assert_same(got, ref, what):
  (loss, grads), (ref_loss, ref_grads) = got, ref
  assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (what, loss, ref_loss)
  assert set(grads) == set(ref_grads), what
  for path, value in ref_grads.items():
    np.testing.assert_allclose(grads[path], value, rtol=1e-4, atol=1e-6, err_msg=f"{what}: {path}")


def _check_variants(preset, variants):
  plain, ref_loss, ref_grads = _loss_and_grads(_model_config(preset))
  assert ref_loss > 0 and any(np.abs(g).max() > 0 for g in ref_grads.values())
  ref_params = _per_layer(nnx.state(plain, nnx.Param))
  for remat, scan in variants:
    model, loss, grads = _loss_and_grads(_model_config(preset, remat, scan))
    stacks = [m for _, m in nnx.iter_graph(model) if isinstance(m, stack.Stacked)]
    assert len(stacks) == {"t5-tiny": 2, "llama-tiny": 1}.get(preset, 2 if scan else 0) * scan
    params = _per_layer(nnx.state(model, nnx.Param))
    assert set(params) == set(ref_params)
    for path, value in ref_params.items():
      np.testing.assert_array_equal(params[path], value, err_msg=str(path))
    _assert_same((loss, grads), (ref_loss, ref_grads), f"{preset} remat={remat} scan_layers={scan}")


@pytest.mark.parametrize("preset", PRESETS)
def test_remat_and_scan_keep_loss_and_gradients(preset):
  """Remat, scanned layers and both give the plain model's loss and gradients; a scanned model built
  from the same seed holds the same weights, stacked. (About 30-60 s per preset on 2 shared cores.)"""
  _check_variants(preset, VARIANTS)


@pytest.mark.slow  # the rest of the (remat, scan_layers) matrix: 30-65 s per preset on 2 shared cores
@pytest.mark.parametrize("preset", PRESETS)
def test_remat_and_scan_keep_loss_and_gradients_more_variants(preset):
  _check_variants(preset, MORE_VARIANTS)


def _bert_dropout_loss_and_grads(remat: str, scan: bool, keys) -> list[tuple[float, dict]]:
  """A bert-tiny encoder (dropout 0.1 everywhere): [(loss, per-layer gradients)] with dropout from each key."""
  cfg = bert.get_config("bert-tiny", vocab_size=VOCAB, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1, remat=remat, scan_layers=scan)
  model = bert.build(cfg, nnx.Rngs(0))
  ids = sharded_models_check.batch_for("encoder")["encoder_input_ids"]

  @nnx.jit
  def step(model, key):
    # (Not the mean square of the post-LayerNorm states: that is 1 whatever the dropout.)
    loss_fn = lambda m, rngs: jnp.mean(jnp.square(m(ids, rngs=rngs)[..., :8].sum(-1)))
    return nnx.value_and_grad(loss_fn)(model, nnx.Rngs(dropout=key))

  return [(float(loss), _per_layer(grads)) for loss, grads in (step(model, k) for k in keys)]


def test_remat_keeps_dropout_and_scan_draws_per_layer_keys():
  """Remat replays a layer's dropout masks exactly (the loop: from the shared stream; scanned: from the
  layer's key), so loss and gradients with dropout are unchanged; a scanned stack's masks follow the call's
  rngs."""
  key, other_key = jax.random.key(0), jax.random.key(1)
  [plain] = _bert_dropout_loss_and_grads("none", False, [key])
  [remat] = _bert_dropout_loss_and_grads("full", False, [key])
  _assert_same(remat, plain, "remat=full, dropout")
  scanned, other = _bert_dropout_loss_and_grads("none", True, [key, other_key])
  assert other[0] != scanned[0]
  [scanned_remat] = _bert_dropout_loss_and_grads("dots", True, [key])
  _assert_same(scanned_remat, scanned, "scanned remat=dots, dropout")


def _ops(preset: str, layers: int, scan: bool) -> int:
  """StableHLO operations of a training step's loss and gradients (lowered, not compiled)."""
  config = _model_config(preset, "dots", scan)
  spec = students.spec(config.model, VOCAB, num_classes=3)
  depth = {"num_hidden_layers": layers} if spec.family == "llama" else {
      "num_encoder_layers": layers, "num_decoder_layers": layers}
  spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, **depth))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: students.build(spec, nnx.Rngs(0))))
  terms = losses.objective_terms(config.objective, spec.kind)
  batch = sharded_models_check.batch_for(spec.kind)

  def loss(state):
    return losses.total_loss(terms, nnx.merge(graphdef, state)(batch), batch)[0]

  text = jax.jit(jax.value_and_grad(loss)).lower(state).as_text()
  return sum(" = " in line for line in text.splitlines())


@pytest.mark.parametrize("preset", ["llama-tiny", "t5-tiny"])
def test_scanned_program_does_not_grow_with_depth(preset):
  assert _ops(preset, 6, scan=True) == _ops(preset, 2, scan=True)
  assert _ops(preset, 6, scan=False) > _ops(preset, 2, scan=False) + 100


@pytest.mark.parametrize("preset", PRESETS)
def test_stacked_axis_is_unsharded_and_layer_dims_keep_their_shardings(preset):
  """With the default logical_axis_rules, a stacked parameter's sharding is its layers' with the leading
  "layers" axis on no mesh axis."""
  mesh = partitioning.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = config_lib.defaults().logical_axis_rules

  def specs(scan):
    spec = students.spec(_model_config(preset, scan_layers=scan).model, VOCAB, num_classes=3)
    state = nnx.state(nnx.eval_shape(lambda: students.build(spec, nnx.Rngs(0))))
    shardings = partitioning.state_shardings(state, mesh, rules)
    names = {path: var.get_metadata()["out_sharding"] for path, var in nnx.to_flat_state(state)}
    return {path: (s.spec, names[path]) for path, s in nnx.to_flat_state(shardings)}

  plain, scanned = specs(False), specs(True)
  stacked = [path for path in scanned if "layer" in path]
  assert stacked
  for path in stacked:
    spec, names = scanned[path]
    k = path.index("layer")
    plain_spec, plain_names = plain[(*path[:k], 0, *path[k + 1:])]
    assert names == ("layers", *plain_names), path
    assert tuple(spec) == (None, *plain_spec) or (tuple(spec) == (None,) and not tuple(plain_spec)), path
  assert any(any(axis is not None for axis in spec) for spec, _ in scanned.values())


def test_hf_directory_loads_scanned_onto_a_mesh(tmp_path):
  """families.load(..., scan_layers=True) on a mesh: each layer's tensors land in the stacked parameters,
  sharded by the rules (the stacked axis on no mesh axis), with the unscanned model's logits."""
  _, plain = _student(_model_config("llama-tiny"))
  hf.save(plain, str(tmp_path / "hf"))
  mesh = partitioning.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  scanned = families.load(str(tmp_path / "hf"), mesh=mesh, rules=config_lib.defaults().logical_axis_rules,
                          scan_layers=True)
  q = scanned.layers.layer.self_attn.q_proj.get_value()
  assert q.shape == (2, 64, 4, 16) and q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  ids = sharded_models_check.batch_for("decoder")["decoder_input_ids"]
  forward = nnx.jit(lambda m, ids: m.forward(ids)[0])
  np.testing.assert_allclose(forward(scanned, ids), forward(plain, ids), atol=1e-5, rtol=0)
  without_layers = tuple((k, tuple(v) if isinstance(v, list) else v)
                         for k, v in config_lib.defaults().logical_axis_rules if k != "layers")
  with jax.set_mesh(mesh), nnx.logical_axis_rules(without_layers):
    with pytest.raises(ValueError, match="needs a logical-axis rule for 'layers'"):
      nnx.eval_shape(lambda: llama.build(scanned.config, nnx.Rngs(0)))


def _sharded_scanned_main(presets) -> int:
  """In a subprocess with 8 CPU devices: scanned students on a (data 2, fsdp 2, tensor 2) mesh compute
  their single-device outputs."""
  config = config_lib.defaults()
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  for preset in presets:
    tu.set_keys(config, {"model.preset": preset, "model.scan_layers": True, "model.remat": "dots"})
    spec, model = _student(config)
    batch = sharded_models_check.batch_for(spec.kind)
    forward = nnx.jit(lambda m, b: m(b))
    single = jax.tree.map(np.asarray, forward(model, batch))
    graphdef, state = nnx.split(model)
    shardings = partitioning.state_shardings(state, mesh, config.logical_axis_rules)
    sharded = forward(nnx.merge(graphdef, jax.device_put(state, shardings)), partitioning.global_batch(batch, mesh))
    worst = max(float(np.abs(np.asarray(sharded[k]) - single[k]).max()) for k in single)
    print(f"{preset}: max |sharded - single| = {worst:.2e}", flush=True)
    if worst > 1e-4:
      return 1
  return 0


def _check_sharded(presets):
  proc = subprocess.run([sys.executable, "-c", "import sys; from tests import test_remat_scan as t; "
                         f"sys.exit(t._sharded_scanned_main({presets!r}))"], cwd=tu.REPO, env=tu.env(devices=8),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert proc.stdout.count("max |sharded - single|") == len(presets), proc.stdout


def test_scanned_decoder_sharded_equals_single_device():
  _check_sharded(["llama-tiny"])


@pytest.mark.slow  # about 70 s on 2 shared cores
def test_scanned_students_sharded_equal_single_device():
  _check_sharded(["t5-tiny", "bert-tiny", "deberta-tiny"])


# ----------------------------------------------------------------- config


def test_config_keys_are_checked_and_reach_every_family_config():
  config = config_lib.defaults()
  assert (config.model.remat, config.model.scan_layers) == ("none", False)
  config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match="config.model.remat='some': expected one of none, full, dots"):
    config_lib.validate(tu.set_keys(config_lib.defaults(), {"model.remat": "some"}))
  for preset in PRESETS:
    spec = students.spec(_model_config(preset, "dots", True).model, VOCAB, num_classes=3)
    assert (spec.config.remat, spec.config.scan_layers) == ("dots", True), preset
    if spec.heads is not None:
      assert (spec.heads.remat, spec.heads.scan_layers) == ("dots", True)
  for make in (lambda: llama.LlamaConfig(remat="some"), lambda: t5.T5Config(remat="some"),
               lambda: bert.BertConfig(remat="some"), lambda: deberta.DebertaConfig(remat="some"),
               lambda: heads.HeadsConfig(num_classes=3, vocab_size=8, hidden_size=8, remat="some")):
    with pytest.raises(ValueError, match="remat='some': expected one of none, full, dots"):
      make()


def test_scan_layers_is_a_workdir_change():
  """Scanned and unscanned parameter trees differ (Orbax checkpoints): a workdir refuses the switch."""
  data = types.SimpleNamespace(splits={}, rationales={})
  old = workdir.fingerprint(config_lib.defaults(), data)
  new = workdir.fingerprint(tu.set_keys(config_lib.defaults(), {"model.scan_layers": True}), data)
  assert workdir.differences(old, new) == ["model.scan_layers (False -> True)"]
  # A workdir made before the keys existed is no change at their defaults.
  older = {k: v for k, v in old.items() if k not in ("model.remat", "model.scan_layers")}
  assert workdir.differences(older, old, workdir.flat_defaults(config_lib.defaults())) == []

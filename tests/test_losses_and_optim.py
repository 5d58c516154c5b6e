"""Loss terms against hand computation; objectives; optimizers; mesh sizing."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxdistill import partitioning, train
from jaxdistill.data.formats import LABEL, RATIONALE
from jaxdistill.objectives import losses


def _batch():
  # One row, three target tokens: a label token (weight 1) and two rationale tokens (weights 0.5, 0.25).
  return {
      "decoder_target_ids": jnp.array([[1, 0, 2]]),
      "decoder_loss_weights": jnp.array([[1.0, 0.5, 0.25]]),
      "decoder_task_ids": jnp.array([[LABEL, RATIONALE, RATIONALE]]),
  }


def _logits():
  return jnp.log(jnp.array([[[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]]))


def test_terms_match_hand_computation():
  outputs, batch = {"logits": _logits()}, _batch()
  label, _ = losses.label_xent(outputs, batch)
  rationale, metrics = losses.rationale_xent(outputs, batch)
  assert float(label) == pytest.approx(-math.log(0.5), rel=1e-6)
  expected = (0.5 * -math.log(0.6) + 0.25 * -math.log(0.8)) / 0.75
  assert float(rationale) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["rationale_tokens"]) == pytest.approx(0.75)


@pytest.mark.parametrize("name,alpha,weights", [("baseline", 0.3, [1.0]), ("cot", 0.3, [0.3, 0.7]),
                                                 ("hybrid", 0.5, [0.5, 0.5]), ("human", 1.0, [1.0, 0.0])])
def test_objective_is_alpha_weighted_sum(name, alpha, weights):
  objective = ml_collections.ConfigDict({"name": name, "alpha": alpha})
  terms = losses.objective_terms(objective)
  assert [t.weight for t in terms] == pytest.approx(weights)
  total, metrics = losses.total_loss(terms, {"logits": _logits()}, _batch())
  parts = [metrics["label_loss"]] + ([metrics["rationale_loss"]] if len(terms) > 1 else [])
  assert float(total) == pytest.approx(sum(w * float(p) for w, p in zip(weights, parts)), rel=1e-6)


def test_bad_objective_names_the_field():
  with pytest.raises(ValueError, match="config.objective.name"):
    losses.objective_terms(ml_collections.ConfigDict({"name": "nope", "alpha": 0.5}))
  with pytest.raises(ValueError, match="config.objective.alpha"):
    losses.objective_terms(ml_collections.ConfigDict({"name": "cot", "alpha": 1.5}))


def _train_config(**kw):
  cfg = ml_collections.ConfigDict(dict(steps=100, warmup_steps=10, learning_rate=1e-2, decay="cosine",
                                       optimizer="adamw", weight_decay=0.0, grad_clip_norm=1.0,
                                       grad_accum_steps=1))
  cfg.update(kw)
  return cfg


def test_schedule_warms_up_then_decays():
  schedule = train.make_schedule(_train_config())
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-2)
  assert float(schedule(100)) == pytest.approx(1e-3, rel=1e-3)  # cosine floor: 10% of peak


@pytest.mark.parametrize("optimizer,accum", [("adamw", 1), ("adafactor", 1), ("adamw", 2)])
def test_optimizers_reduce_a_quadratic(optimizer, accum):
  tx = train.make_optimizer(_train_config(optimizer=optimizer, grad_accum_steps=accum, warmup_steps=0,
                                          decay="constant"))
  params = {"w": jnp.full((4, 4), 3.0)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p["w"] ** 2)
  start = float(loss(params))
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < start


def test_unknown_optimizer_and_schedule_name_the_field():
  with pytest.raises(ValueError, match="config.train.optimizer"):
    train.make_optimizer(_train_config(optimizer="sgdx"))
  with pytest.raises(ValueError, match="config.train.decay"):
    train.make_schedule(_train_config(decay="zigzag"))


def test_mesh_shape_resolves_the_rest():
  assert partitioning.mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
  assert partitioning.mesh_shape({"data": 2, "fsdp": 1, "tensor": -1}, 8) == (2, 1, 4)
  with pytest.raises(ValueError, match="config.mesh"):
    partitioning.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    partitioning.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def test_fit_to_shape_replicates_dims_the_mesh_does_not_divide():
  mesh = jax.sharding.AbstractMesh((2, 1, 4), partitioning.MESH_AXES)
  assert tuple(partitioning._fit_to_shape(P("fsdp", "tensor"), (3, 8), mesh)) == ("fsdp", "tensor")
  assert tuple(partitioning._fit_to_shape(P("tensor", ("data", "tensor")), (6, 8), mesh)) == (None, ("data", "tensor"))
  assert tuple(partitioning._fit_to_shape(P("data"), (4, 3), mesh)) == ("data", None)

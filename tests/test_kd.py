"""The sparse top-k KL of teacher-logit distillation (objectives/kd.py) against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.objectives import kd


def _hand_kl(student_logits, ids, teacher_logprobs, t):
  """T^2 * sum_k p_k log(p_k / q_k), p = softmax over the teacher's finite top-k at T, q = the
  student's full softmax at T read at the same ids."""
  finite = np.isfinite(teacher_logprobs)
  if not finite.any():
    return 0.0
  z = np.exp((teacher_logprobs[finite] / t) - np.max(teacher_logprobs[finite] / t))
  p = z / z.sum()
  s = student_logits / t
  log_q_all = s - (np.log(np.exp(s - s.max()).sum()) + s.max())
  log_q = log_q_all[ids[finite]]
  return t * t * float(np.sum(p * (np.log(p) - log_q)))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_equals_a_hand_computation(temperature):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 11)).astype(np.float32)
  ids = np.stack([rng.permutation(11)[:4] for _ in range(6)]).reshape(2, 3, 4).astype(np.int32)
  teacher = np.sort(rng.normal(size=(2, 3, 4)), axis=-1)[..., ::-1].astype(np.float32) - 1.0
  teacher[0, 1, 3] = -np.inf  # a teacher that returned only 3 alternatives here
  teacher[1, 2, :] = -np.inf  # a token without teacher logprobs (a prompt or label token)
  per_token, mask = kd.topk_kl(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(teacher), temperature)
  for b in range(2):
    for l in range(3):
      np.testing.assert_allclose(per_token[b, l], _hand_kl(logits[b, l], ids[b, l], teacher[b, l], temperature),
                                 rtol=1e-5, atol=1e-6, err_msg=f"token {b},{l}")
  assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
  assert (np.asarray(per_token) >= -1e-6).all()

  batch = {"kd_top_ids": jnp.asarray(ids), "kd_top_logprobs": jnp.asarray(teacher),
           "decoder_loss_weights": jnp.asarray([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])}
  loss, metrics = kd.topk_kl_term(temperature)({"logits": jnp.asarray(logits)}, batch)
  expected = np.mean([_hand_kl(logits[b, l], ids[b, l], teacher[b, l], temperature)
                      for b, l in ((0, 0), (0, 1), (1, 0), (1, 1))])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics["kd_tokens"]) == 4.0

  grads = jax.grad(lambda x: kd.topk_kl_term(temperature)({"logits": x}, batch)[0])(jnp.asarray(logits))
  assert np.isfinite(np.asarray(grads)).all()
  assert np.abs(np.asarray(grads)[1, 2]).max() == 0.0  # no teacher there: no gradient


def test_topk_kl_is_zero_when_the_student_matches_a_teacher_with_all_its_mass_on_the_top_k():
  logits = jnp.asarray([[[2.0, 0.5, -1.0, -30.0, -30.0]]])
  ids = jnp.asarray([[[0, 1, 2]]], jnp.int32)
  log_q = jax.nn.log_softmax(logits, -1)[..., :3]
  per_token, _ = kd.topk_kl(logits, ids, log_q)
  np.testing.assert_allclose(per_token, 0.0, atol=1e-5)

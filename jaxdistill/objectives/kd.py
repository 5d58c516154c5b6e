"""Teacher-logit distillation: a sparse top-k KL between the teacher's cached next-token distribution
and the student's, on the rationale tokens.

`jaxdistill.teach` with `teacher.top_logprobs=k` keeps, for every generated token, the teacher's k most
likely next tokens and their logprobs (`top_ids`, `top_logprobs`). On those k ids the teacher's
distribution is renormalised at temperature T, p_k = softmax(top_logprobs / T), and compared with the
student's full-vocabulary distribution q = softmax(logits / T) read at the same ids:

    KL_topk = T^2 * sum_k p_k (log p_k - log q_k)          (per token; >= 0 because sum_k q_k <= 1)

averaged over the tokens that carry a teacher distribution (the T^2 keeps gradient scale comparable
across temperatures, as in Hinton et al. 2015). The ids index the teacher's vocabulary, so the student
must share the teacher's tokenizer: the method refuses any other at start.

Batch keys (host-side, aligned with `decoder_target_ids`): `kd_top_ids` int32 [B, L, K] and
`kd_top_logprobs` float32 [B, L, K]; a token without teacher logprobs has `kd_top_logprobs` = -inf in
every slot, which gives it weight 0.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def topk_kl(logits: jax.Array, top_ids: jax.Array, top_logprobs: jax.Array,
            temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(KL_topk per token [B, L], which tokens have a teacher distribution [B, L] as 0/1 floats)."""
  t = jnp.float32(temperature)
  has_teacher = jnp.isfinite(top_logprobs).any(-1)
  teacher = jnp.where(jnp.isfinite(top_logprobs), top_logprobs.astype(jnp.float32) / t, -jnp.inf)
  teacher = jnp.where(has_teacher[..., None], teacher, 0.0)  # rows without a teacher: any finite values
  log_p = jax.nn.log_softmax(teacher, axis=-1)
  p = jnp.exp(log_p)
  log_p = jnp.where(p > 0, log_p, 0.0)  # empty slots (-inf) add 0, not 0 * inf
  log_q = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32) / t, axis=-1), top_ids, axis=-1)
  per_token = (t * t) * jnp.sum(p * (log_p - log_q), axis=-1)
  mask = has_teacher.astype(jnp.float32)
  return per_token * mask, mask


def topk_kl_term(temperature: float = 1.0):
  """The loss term `(outputs, batch) -> (loss, metrics)`: KL_topk averaged over the tokens that
  carry teacher logprobs and loss weight."""

  def term(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]):
    per_token, mask = topk_kl(outputs["logits"], batch["kd_top_ids"], batch["kd_top_logprobs"], temperature)
    weights = mask * (batch["decoder_loss_weights"] > 0)
    tokens = weights.sum()
    loss = (per_token * weights).sum() / jnp.maximum(tokens, 1e-8)
    return loss, {"kd_loss": loss, "kd_tokens": tokens}

  term.__name__ = "topk_kl"
  return term

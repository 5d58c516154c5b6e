"""Run with 8 fake CPU devices (tests/test_model_sharding.py does): every student kind gives the
same outputs with its parameters sharded over a (data 2, fsdp 2, tensor 2) mesh as on one device.

Prints one line per preset and exits non-zero on a mismatch.
"""

import sys

import jax
import numpy as np
from flax import nnx

from configs import base
from jaxdistill import partitioning
from jaxdistill.data import pipeline
from jaxdistill.data.formats import LABEL, RATIONALE, Seq2SeqRecord
from jaxdistill.data.tokenizer import ByteTokenizer
from jaxdistill.models import students

PRESETS = sys.argv[1:] or ["t5-tiny", "bert-tiny", "deberta-tiny", "llama-tiny"]
TOK = ByteTokenizer()


def batch_for(kind: str) -> dict[str, np.ndarray]:
  records = [Seq2SeqRecord("premise: a dog runs", "neutral", LABEL, 1.0, "a", 1),
             Seq2SeqRecord("premise: two cats sleep", "a rationale", RATIONALE, 1.0, "b"),
             Seq2SeqRecord("x", "contradiction", LABEL, 1.0, "c", 2)] * 3
  feats = [pipeline.tokenize_record(r, TOK, 32, 16) for r in records]
  rows = [pipeline._pack_row(feats[i:i + 2], 48, 32, TOK.pad_id) for i in range(0, 8, 2)]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  view = pipeline.batch_view(kind, TOK)
  return view(batch) if view else batch


def main() -> int:
  assert jax.device_count() == 8, jax.devices()
  config = base.get_config()
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  failed = 0
  for preset in PRESETS:
    config.model.preset = preset
    spec = students.spec(config.model, TOK.vocab_size, num_classes=3)
    model = students.build(spec, nnx.Rngs(0))
    batch = batch_for(spec.kind)
    forward = nnx.jit(lambda m, b: m(b))
    single = jax.tree.map(np.asarray, forward(model, batch))
    graphdef, state = nnx.split(model)
    shardings = partitioning.state_shardings(state, mesh, config.logical_axis_rules)
    sharded_state = jax.device_put(state, shardings)
    sharded_model = nnx.merge(graphdef, sharded_state)
    sharded = forward(sharded_model, partitioning.global_batch(batch, mesh))
    split = [k for k, s in jax.tree_util.tree_flatten_with_path(shardings)[0] if len(s.device_set) > 1
             and not s.is_fully_replicated]
    worst = max(float(np.abs(np.asarray(sharded[k]) - single[k]).max()) for k in single)
    ok = worst <= 1e-4 and len(split) > 0
    failed += not ok
    print(f"{preset} ({spec.kind}): {len(split)} of {len(jax.tree.leaves(shardings))} parameters sharded; "
          f"max |sharded - single| = {worst:.2e} over {sorted(single)}: {'ok' if ok else 'MISMATCH'}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())

"""Compile time, program size and activation memory of a training step for each model.remat x model.scan_layers.

    python benchmarks/remat_scan.py [--preset=smollm2-135m] [--batch=4] [--length=256] [--vocab=1024]

Lowers and compiles (does not run) jit(value_and_grad(cross-entropy)) of the preset's decoder- or seq2seq
student on abstract parameters; prints per variant the seconds to trace + lower and to compile, the
StableHLO operation count, and XLA's temporary-buffer bytes (the activations kept for the backward pass,
what remat trades for recomputation) from `compiled.memory_analysis()`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from flax import nnx

from jaxdistill import config as config_lib
from jaxdistill.models import students

FLAGS = flags.DEFINE_string("preset", "smollm2-135m", "a decoder or seq2seq student preset")
BATCH = flags.DEFINE_integer("batch", 4, "rows")
LENGTH = flags.DEFINE_integer("length", 256, "tokens per row (encoder and decoder alike)")
VOCAB = flags.DEFINE_integer("vocab", 1024, "vocabulary size (the tokenizer's)")
VARIANTS = [("none", False), ("none", True), ("full", False), ("full", True), ("dots", False), ("dots", True)]


def measure(preset: str, remat: str, scan: bool) -> dict:
  config = config_lib.defaults()
  config.model.preset, config.model.remat, config.model.scan_layers = preset, remat, scan
  spec = students.spec(config.model, VOCAB.value)
  if spec.kind == "encoder":
    raise app.UsageError("encoder students need a label set; use a decoder or seq2seq preset")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: students.build(spec, nnx.Rngs(0))))
  ids = jax.ShapeDtypeStruct((BATCH.value, LENGTH.value), jnp.int32)
  batch = {"decoder_input_ids": ids, "decoder_target_ids": ids}
  if spec.kind == "seq2seq":
    batch["encoder_input_ids"] = ids

  def loss(state, batch):
    logits = nnx.merge(graphdef, state)(batch)["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_ids"]).mean()

  start = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss)).lower(state, batch)
  lowered_s = time.perf_counter() - start
  ops = sum(" = " in line for line in lowered.as_text().splitlines())
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return {"lower_s": lowered_s, "compile_s": compile_s, "ops": ops,
          "temp_mib": None if memory is None else memory.temp_size_in_bytes / 2**20}


def main(argv):
  del argv
  print(f"{FLAGS.value}, batch {BATCH.value} x {LENGTH.value} tokens, vocab {VOCAB.value}, {jax.devices()[0].platform}")
  print(f"{'remat':6} {'scan':5} {'trace+lower s':>13} {'compile s':>9} {'HLO ops':>8} {'temp MiB':>9}")
  for remat, scan in VARIANTS:
    r = measure(FLAGS.value, remat, scan)
    temp = "-" if r["temp_mib"] is None else f"{r['temp_mib']:.0f}"
    print(f"{remat:6} {str(scan):5} {r['lower_s']:13.1f} {r['compile_s']:9.1f} {r['ops']:8d} {temp:>9}", flush=True)


if __name__ == "__main__":
  app.run(main)

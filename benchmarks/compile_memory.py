"""Per-device memory of students' train steps on a TPU slice, with and without remat, compiled on this CPU.

    python benchmarks/compile_memory.py --topology=v5e-16 [--presets=llama-3.2-1b,qwen3-0.6b,t5-base,deberta-v3-base]
        [--remat=none,full] [--scan=False] [--batch=32] [--config=configs/hybrid.py] [--config.x=y ...]

For each preset x remat setting, `jaxdistill.compile` builds the run's train step as shapes (fsdp over every
chip, the preset's pretrained vocabulary), the TPU compiler compiles it (nothing runs; needs libtpu, the `tpu`
extra) and the table gives what it planned per device: arguments (parameter and optimizer shards, the batch),
temporaries (activations kept for the backward pass, gathered weights, gradients), the total needed against
the chip's HBM, and each setting's temporaries relative to the first remat setting's (the reference).
All compiles run in this one process, so the libtpu and compiler options are the same for every row.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ imports `configs.base`

from jaxdistill import compile as compile_lib
from jaxdistill import runtime, topologies

_PRESETS = flags.DEFINE_list("presets", ["llama-3.2-1b", "qwen3-0.6b", "t5-base", "deberta-v3-base"], "student presets")
_REMAT = flags.DEFINE_list("remat", ["none", "full"], "model.remat settings; the first is the reference")
_SCAN = flags.DEFINE_bool("scan", False, "model.scan_layers")
_BATCH = flags.DEFINE_integer("batch", 32, "train.batch_size (global rows)")
FLAGS = flags.FLAGS  # and jaxdistill.compile's --config (the setting; its data gives the rows' shape,
# --config.x=y overrides apply) and --topology

GiB = topologies.GiB


def setting(preset: str, remat: str):
  config = copy.deepcopy(FLAGS.config)
  config.model.update(preset=preset, remat=remat, scan_layers=_SCAN.value)
  config.train.batch_size = config.eval.batch_size = _BATCH.value  # both split over every chip
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config


def main(argv):
  del argv
  runtime.prepare_process()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # the slice's devices are compile-only
  print(f"{FLAGS.topology}, fsdp over every chip, batch {_BATCH.value}, scan_layers={_SCAN.value}, "
        f"{config_flags.get_config_filename(FLAGS['config'])}'s rows; GiB per device "
        f"(HBM {topologies.describe(FLAGS.topology).chip.hbm_bytes / GiB:g})")
  print("| preset | remat | arguments | temporaries | needed | fits | temporaries vs " + _REMAT.value[0] + " | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for preset in _PRESETS.value:
    reference = None
    for remat in _REMAT.value:
      log = io.StringIO()
      with contextlib.redirect_stdout(log):  # compile's own report: kept out of the table
        report = compile_lib.run(setting(preset, remat), FLAGS.topology, vocab="preset")
      reference = reference or report.temp
      note = f" (compiler: {report.compiler_oom[:60]})" if report.compiler_oom else ""
      print(f"| {preset} | {remat} | {report.argument / GiB:.2f} | {report.temp / GiB:.2f} | {report.needed / GiB:.2f} "
            f"| {'yes' if report.fits else 'no'}{note} | {report.temp / reference:.2f}x | {report.compile_seconds:.0f} |",
            flush=True)


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)

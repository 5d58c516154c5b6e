"""Entry point: `python -m jaxdistill.main --config=configs/hybrid.py --workdir=runs/hybrid`.

Thin on purpose: flags, distributed/platform set-up, then `train.run`.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdistill import runtime

_CONFIG = config_flags.DEFINE_config_file("config", "configs/hybrid.py", "Setting config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<setting name>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.prepare_process()
  import jax  # pylint: disable=g-import-not-at-top

  if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Cross-process collectives on CPU hosts (tests, laptops); accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif os.environ.get("TPU_NAME") or os.environ.get("SLURM_JOB_ID"):
    jax.distributed.initialize()  # cluster environments are auto-detected

  from jaxdistill import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  logging.info("config:\n%s", config)
  with runtime.refusals_as_exit():
    train.run(config, workdir)


if __name__ == "__main__":
  app.run(main)

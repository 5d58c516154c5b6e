# ---
# jupyter:
#   accelerator: TPU
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training over every chip of a TPU
#
# One jaxdistill run spans all chips of the machine: a device mesh with the axes `data`, `fsdp` and `tensor`
# (`config.mesh.*`, `-1` = the remaining devices), parameters that carry logical axis names (`embed`, `mlp`,
# `heads`, ...) mapped onto mesh axes by `config.logical_axis_rules`, and one `jax.jit` train step whose
# inputs and outputs are laid out by those shardings. This notebook uses the Python API (`jaxdistill.train`)
# to show the pieces:
#
# 1. the devices and the mesh (`mesh.fsdp=-1`: parameters, optimizer state and the batch split over all chips),
# 2. every parameter's sharding and the shard each device holds,
# 3. a small training run of the `hybrid` setting on the embedded task,
# 4. the train step's throughput.
#
# On a Colab TPU runtime (Runtime > Change runtime type > TPU) the mesh covers all its chips. Without a TPU
# (a CPU or GPU runtime, and the project's tests) it runs on 8 simulated CPU devices, so the same cells
# build, shard and train over a real 8-device mesh; about 2 minutes on two CPU cores.

# %% [markdown]
# ## Install (on Colab only)
#
# On Colab this installs jaxdistill; set `JAXDISTILL_SOURCE` to anything `pip install` takes: a clone of the
# repository uploaded to `/content/jaxdistill` (the default), or your copy's git URL (`git+https://...`).
# Colab's TPU runtimes come with JAX for TPU. Elsewhere the notebook uses the jaxdistill already installed.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:
  JAXDISTILL_SOURCE = "/content/jaxdistill"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", JAXDISTILL_SOURCE], check=True)

# %% [markdown]
# ## Devices
#
# Whether the machine has TPU chips is read from its PCI bus (Google's vendor id and a TPU device id, as JAX
# counts chips), before JAX is imported: without a TPU, XLA is told to split the CPU into 8 devices, which it
# reads once, when JAX starts. (If JAX was already imported in this kernel, restart it first.)

# %%
import glob
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}  # v2/v3, v4, v5p, v5e, v6e, 7x


def read(path):
  with open(path) as f:
    return f.read().strip()


def tpu_chips():
  devices = (os.path.dirname(p) for p in glob.glob("/sys/bus/pci/devices/*/vendor"))
  return sum(read(f"{d}/vendor") == GOOGLE_PCI_VENDOR and read(f"{d}/device") in TPU_PCI_DEVICES for d in devices)


ON_TPU = tpu_chips() > 0
if not ON_TPU:
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])

import jax

devices = jax.devices()
print(f"{len(devices)} {jax.default_backend()} devices: {devices}")
if not ON_TPU:
  assert len(devices) == 8, "JAX started before XLA_FLAGS was set: restart the kernel and run from the top"

# %% [markdown]
# ## The setting
#
# `configs/hybrid.py` with `mesh.data=1, mesh.fsdp=-1`: one fully sharded data-parallel axis over all devices.
# The global batch must split evenly over the data axes, so it is a multiple of the device count. On a TPU the
# student is `t5-small` for 300 steps; on the CPU `t5-tiny` for 30.

# %%
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # jaxdistill imports TensorFlow (CLU's writers): no INFO lines

from configs import hybrid
from jaxdistill import partitioning, runtime, train

runtime.prepare_process()  # what `python -m jaxdistill.main` does first: quiet logs, TensorFlow off accelerators

config = hybrid.get_config()
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
if ON_TPU:
  config.model.preset = "t5-small"
  config.train.steps, config.train.batch_size, config.eval.every = 300, 16 * len(devices), 100
else:
  config.model.preset, config.model.vocab_size = "t5-tiny", 512
  config.data.demo.num_train, config.data.demo.num_dev, config.data.demo.num_test = 400, 48, 48
  config.train.steps, config.train.batch_size, config.eval.every = 30, 2 * len(devices), 30
config.train.warmup_steps, config.train.log_every = 10, 10

WORKDIR = "runs/tpu-hybrid"
shutil.rmtree(WORKDIR, ignore_errors=True)  # a fresh run each time (in the same workdir a run would resume)
job = train.setup(config, WORKDIR)  # data, tokenizer, mesh, sharded student and optimizer, checkpoints
print(partitioning.describe(job.mesh))
print(job.mesh.devices)

# %% [markdown]
# ## Parameter shardings
#
# Each parameter's logical axes become a `PartitionSpec` over the mesh axes; a dimension a mesh axis does not
# divide stays whole (replicated). `shard` is the block of the parameter each device holds, `blocks` how many
# distinct blocks the devices hold (1: every device has all of it).

# %%
import math

import pandas as pd
from flax import nnx

params = job.student.params(job.state)
rows = []
for path, variable in nnx.to_flat_state(params):
  x = variable.get_value()
  shard = x.sharding.shard_shape(x.shape)
  rows.append({"parameter": "/".join(map(str, path)), "shape": x.shape, "spec": str(x.sharding.spec),
               "shard": shard, "blocks": len({str(s.index) for s in x.addressable_shards}),
               "MiB per device": math.prod(shard) * x.dtype.itemsize / 2**20})
shardings = pd.DataFrame(rows)
total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) / 2**20
print(f"{len(rows)} parameters, {job.n_params:,} values, {total:.2f} MiB; "
      f"per device {shardings['MiB per device'].sum():.2f} MiB")
pd.set_option("display.max_rows", 20)
shardings

# %% [markdown]
# ## Train
#
# `train_loop` runs the jitted step over the mesh (each host feeds its slice of the global batch), evaluates
# on dev every `eval.every` steps, keeps the best model and saves Orbax checkpoints; `finalize` tests the best
# model once, exports it and writes `metrics.json` (`train.run` is the two together).

# %%
import time

start = time.perf_counter()
assert train.train_loop(job)
result = train.finalize(job)
print(f"{time.perf_counter() - start:.0f}s; mesh in metrics.json: {result['mesh']}")

# %% [markdown]
# ## Throughput
#
# The same jitted step on a fresh iterator of the same data: compiled and warmed up first, then timed over
# `TIMED_STEPS` steps (the state is donated to each step, so only the last one is waited for). A token is a
# non-padding source or target token of the packed rows.

# %%
import numpy as np

TIMED_STEPS = 50 if ON_TPU else 10
step = train.make_train_step(job.student, config, job.mesh, job.methods)
batches = train.make_train_iterator(config, job.dataset, job.tokenizer, job.student, job.methods)
local = [next(batches) for _ in range(TIMED_STEPS + 2)]
tokens = [int(np.count_nonzero(b["encoder_segment_ids"]) + np.count_nonzero(b["decoder_segment_ids"])) for b in local]
state = job.state
for batch in local[:2]:  # compile and warm up
  state, _ = step(state, partitioning.global_batch(batch, job.mesh))
jax.block_until_ready(state)
start = time.perf_counter()
for batch in local[2:]:
  state, metrics = step(state, partitioning.global_batch(batch, job.mesh))
jax.block_until_ready(state)
seconds = time.perf_counter() - start
rate = sum(tokens[2:]) / seconds
print(f"{TIMED_STEPS / seconds:.2f} steps/s, {TIMED_STEPS * config.train.batch_size / seconds:.1f} rows/s, "
      f"{rate:,.0f} tokens/s ({rate / len(devices):,.0f} per device) on {partitioning.describe(job.mesh)}; "
      f"last loss {float(metrics['loss']):.3f}")

"""Shared helpers for the end-to-end training tests: a tiny config and run/read utilities."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A hybrid run small enough to compile and train in seconds on 2 CPU cores.
TINY_OVERRIDES = {
    "model.preset": "t5-tiny",
    "model.vocab_size": 256,
    "data.demo.num_train": 160,
    "data.demo.num_dev": 32,
    "data.demo.num_test": 32,
    "data.max_source_len": 64,
    "data.max_target_len": 48,
    "train.steps": 24,
    "train.batch_size": 8,
    "train.warmup_steps": 4,
    "train.log_every": 4,
    "train.checkpoint_every": 6,
    "eval.every": 12,
    "eval.batch_size": 16,
}


def tiny_config(**overrides):
  """The hybrid config with TINY_OVERRIDES (+ `overrides`, dotted keys with '__' for '.')."""
  sys.path.insert(0, REPO)
  from configs import hybrid  # pylint: disable=g-import-not-at-top
  config = hybrid.get_config()
  merged = dict(TINY_OVERRIDES)
  merged.update({k.replace("__", "."): v for k, v in overrides.items()})
  return set_keys(config, merged)


def set_keys(config, values: dict):
  """Sets dotted keys ("a.b.c", or "a__b__c") of `config` in place; returns it."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.replace("__", ".").split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main_command(workdir: str, config_file: str = "configs/hybrid.py", **overrides) -> list[str]:
  merged = dict(TINY_OVERRIDES)
  merged.update({k.replace("__", "."): v for k, v in overrides.items()})
  return ([sys.executable, "-m", "jaxdistill.main", f"--config={config_file}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in merged.items()])


def env(devices: int = 1, **extra) -> dict:
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)
  if devices > 1:
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  e.update(extra)
  return e


def run_main(workdir: str, devices: int = 1, timeout: int = 600, **overrides) -> subprocess.CompletedProcess:
  proc = subprocess.run(main_command(workdir, **overrides), cwd=REPO, env=env(devices),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
  return proc


def read_scalars(workdir: str, tag: str) -> dict[int, float]:
  """Scalar values written by CLU's TensorBoard writer, by step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
  return values


def read_final_params(workdir: str) -> dict[str, np.ndarray]:
  """The model+optimizer state of the newest checkpoint, as flat numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(steps[-1]), "state"))
  import jax  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def kill_anywhere(command: list[str], *, kills: int, span: float, seed: int, devices: int = 1) -> list[str]:
  """Starts `command` `kills` times and `kill -9`s each start after a seeded random time in [0, span)
  (span: an uninterrupted run's wall time, so the kills fall anywhere: start-up, steps, evaluations,
  saves, the best-model save, export, metrics); then runs it to the end. Returns what each start did."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  what = []
  for _ in range(kills):
    delay = rng.uniform(0.0, span)
    proc = subprocess.Popen(command, cwd=REPO, env=env(devices), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
      _, stderr = proc.communicate(timeout=delay)
      assert proc.returncode == 0, f"a run between kills failed:\n{stderr[-4000:]}"
      what.append(f"finished before {delay:.1f}s")
    except subprocess.TimeoutExpired:
      proc.kill()  # SIGKILL: no handler runs, nothing is flushed
      proc.communicate()
      what.append(f"killed at {delay:.1f}s")
  final = subprocess.run(command, cwd=REPO, env=env(devices), capture_output=True, text=True, timeout=900)
  assert final.returncode == 0, f"the run after the kills failed ({what}):\n{final.stderr[-6000:]}"
  return what


def read_best_params(workdir: str) -> dict[str, np.ndarray]:
  """The best-on-dev parameters (the newest step of WORKDIR/best), as flat numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "best")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "params"))
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def assert_same_run(reference: str, workdir: str) -> None:
  """Bit-identical final and best parameters and exported weights, and identical metrics.json."""
  for read in (read_final_params, read_best_params):
    expected, actual = read(reference), read(workdir)
    assert expected.keys() == actual.keys()
    for key in expected:
      np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{read.__name__} {key}")
  with open(os.path.join(reference, "metrics.json")) as f, open(os.path.join(workdir, "metrics.json")) as g:
    assert json.load(g) == json.load(f)
  with open(os.path.join(reference, "hf", "model.safetensors"), "rb") as f, \
       open(os.path.join(workdir, "hf", "model.safetensors"), "rb") as g:
    assert f.read() == g.read(), "exported weights differ"

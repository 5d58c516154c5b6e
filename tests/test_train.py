"""End-to-end training: outputs, kill -9 resume, meshes and SIGTERM (multi-host runs: test_multihost.py).

Each run is a real `python -m jaxdistill.main` subprocess on the tiny config (tests/train_utils.py).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import partitioning, train
from tests import train_utils as tu


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted tiny hybrid run, shared by the tests that compare against it."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  start = time.perf_counter()
  proc = tu.run_main(workdir)
  return workdir, proc, time.perf_counter() - start


def test_run_writes_checkpoints_events_and_metrics(reference_run):
  workdir, proc, _ = reference_run
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics["setting"] == "hybrid"
  assert metrics["steps"] == tu.TINY_OVERRIDES["train.steps"]
  assert 0.0 <= metrics["dev_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
  assert metrics["dev_rationale_perplexity"] > 1.0
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(metrics["steps"])))
  assert os.listdir(os.path.join(workdir, "best"))
  last_line = proc.stdout.strip().splitlines()[-1]
  assert "dev_accuracy=" in last_line and "test_accuracy=" in last_line
  assert "mesh: data=1 x fsdp=1 x tensor=1" in proc.stdout
  losses = tu.read_scalars(workdir, "train/loss")
  assert len(losses) == tu.TINY_OVERRIDES["train.steps"] // tu.TINY_OVERRIDES["train.log_every"]
  assert losses[max(losses)] < losses[min(losses)], "training loss should go down"


def _wait_for_checkpoint(workdir: str, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
  target = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(target):
    assert proc.poll() is None, f"run ended before step {step}: {proc.stderr.read()[-3000:]}"
    assert time.time() < deadline, f"no checkpoint {step} after {timeout}s"
    time.sleep(0.2)


@pytest.mark.parametrize("kills,seed", [
    pytest.param(2, 0, id="2-kills"),
    pytest.param(8, 1, id="8-kills", marks=pytest.mark.slow),
])
def test_killed_anywhere_then_rerun_ends_as_the_uninterrupted_run(reference_run, tmp_path, kills, seed):
  """kill -9 at seeded random times over the whole run (start-up, steps, dev evaluations, the async
  checkpoint and best-model saves, test evaluation, export, metrics.json), each followed by the same
  command: the parameters, the best model, the export and metrics.json are the uninterrupted run's."""
  reference_dir, _, seconds = reference_run
  workdir = str(tmp_path / "killed")
  what = tu.kill_anywhere(tu.main_command(workdir), kills=kills, span=seconds, seed=seed)
  print(what)
  tu.assert_same_run(reference_dir, workdir)


def test_rerun_after_a_kill_between_best_save_and_checkpoint_commit(reference_run, tmp_path):
  """The window that made runs unresumable: best/12 is written, checkpoint 12 is not (its save was
  in flight). The rerun resumes from step 6, evaluates step 12 again and must replace best/12 (it
  died with Orbax's StepAlreadyExistsError), then end as the uninterrupted run."""
  reference_dir, _, _ = reference_run
  workdir = str(tmp_path / "window")
  tu.run_main(workdir, train__keep_checkpoints=10)
  checkpoints = os.path.join(workdir, "checkpoints")
  for step in os.listdir(checkpoints):
    if step.isdigit() and int(step) > 6:
      shutil.rmtree(os.path.join(checkpoints, step))
  os.makedirs(os.path.join(checkpoints, "12.orbax-checkpoint-tmp-1754", "state"))  # the save in flight
  for leftover in ("metrics.json", "hf"):
    shutil.rmtree(os.path.join(workdir, leftover), ignore_errors=True)
    if os.path.isfile(os.path.join(workdir, leftover)):
      os.remove(os.path.join(workdir, leftover))
  assert os.path.isdir(os.path.join(workdir, "best", "12"))

  resumed = tu.run_main(workdir, train__keep_checkpoints=10)
  assert "Resumed from step 6" in resumed.stderr
  assert not any("orbax-checkpoint-tmp" in d for d in os.listdir(checkpoints))
  tu.assert_same_run(reference_dir, workdir)


def test_a_workdir_refuses_another_config_in_one_line(reference_run):
  """A finished demo run rerun on e-SNLI with another vocabulary used to "resume", evaluate the demo
  model on e-SNLI and overwrite metrics.json."""
  reference_dir, _, _ = reference_run
  metrics = open(os.path.join(reference_dir, "metrics.json")).read()
  data = os.path.join(os.path.dirname(tu.REPO), "shared", "data", "dss", "esnli")
  proc = subprocess.run(tu.main_command(reference_dir, data__source="dss", data__task="esnli", data__path=data,
                                        model__vocab_size=300),
                        cwd=tu.REPO, env=tu.env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {reference_dir} was made with another config or data:"), last
  for key in ("data.source ('demo' -> 'dss')", "data.task ('demo' -> 'esnli')", "model.vocab_size (256 -> 300)",
              "data.content_sha256"):
    assert key in last
  assert "Traceback" not in proc.stderr
  assert open(os.path.join(reference_dir, "metrics.json")).read() == metrics


def test_sigterm_saves_then_exits_and_resumes(tmp_path):
  workdir = str(tmp_path / "sigterm")
  proc = subprocess.Popen(tu.main_command(workdir, train__checkpoint_every=50, train__steps=400),
                          cwd=tu.REPO, env=tu.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, 50, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert saved and 50 < max(saved) < 400, saved  # saved at the step it stopped, off the 50-step schedule
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


@pytest.mark.slow
def test_2x4_meshes_match_single_device_loss_curve(reference_run, tmp_path):
  reference_dir, _, _ = reference_run
  reference = tu.read_scalars(reference_dir, "train/loss")
  for axes in ({"mesh.data": 2, "mesh.tensor": 4, "mesh.fsdp": 1},
               {"mesh.data": 2, "mesh.fsdp": 4, "mesh.tensor": 1}):
    workdir = str(tmp_path / "_".join(f"{k[5:]}{v}" for k, v in axes.items()))
    proc = tu.run_main(workdir, devices=8, **{k.replace(".", "__"): v for k, v in axes.items()})
    assert f"mesh: data=2 x fsdp={axes['mesh.fsdp']} x tensor={axes['mesh.tensor']} (8 devices)" in proc.stdout
    curve = tu.read_scalars(workdir, "train/loss")
    assert curve.keys() == reference.keys()
    np.testing.assert_allclose([curve[s] for s in sorted(curve)], [reference[s] for s in sorted(reference)],
                               rtol=2e-4, atol=2e-5, err_msg=str(axes))


def test_trains_on_real_esnli_release(tmp_path):
  """The DSS e-SNLI release: train on part of dev, select on the rest, test on test."""
  data = os.path.join(os.path.dirname(tu.REPO), "shared", "data", "dss", "esnli")
  assert os.path.isdir(data), f"real data expected at {data}"
  workdir = str(tmp_path / "esnli")
  proc = tu.run_main(workdir, data__source="dss", data__task="esnli", data__path=data,
                     data__dev_size=200, data__max_train_examples=96, data__max_eval_examples=48,
                     train__steps=6, train__checkpoint_every=3, eval__every=6)
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics["data"]["task"] == "esnli"
  assert metrics["data"]["train_examples"] == 96
  assert metrics["data"]["dev_examples"] == 200 and metrics["data"]["test_examples"] == 9824
  assert metrics["data"]["evaluated_examples"] == {"dev": 48, "test": 48}  # the accuracies are over these
  assert metrics["dev_rationale_perplexity"] > 1.0
  assert "test_accuracy=" in proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("preset", ["t5-tiny", "bert-tiny"])
def test_dropout_trains_and_draws_its_masks_from_the_step(preset, tmp_path):
  """model.dropout_rate > 0 through the real train step: finite losses, a mask that changes from step to
  step (fold_in(seed, step)) and the same loss again for the same state and step."""
  config = tu.tiny_config(model__preset=preset, model__dropout_rate=0.3)
  job = train.setup(config, str(tmp_path / "w"))
  step_fn = train.make_train_step(job.student, config, job.mesh, job.methods)
  batch = partitioning.global_batch(next(job.train_iter), job.mesh)
  copy = jax.tree.map(jnp.copy, job.state)  # the step donates its input state
  state1, first = step_fn(job.state, batch)
  _, again = step_fn(copy, batch)
  _, second = step_fn(state1, batch)
  assert np.isfinite(float(first["loss"])) and float(first["loss"]) == float(again["loss"])
  assert float(second["loss"]) != float(first["loss"])
  no_dropout = tu.tiny_config(model__preset=preset)
  job0 = train.setup(no_dropout, str(tmp_path / "w0"))
  _, plain = train.make_train_step(job0.student, no_dropout, job0.mesh, job0.methods)(
      job0.state, partitioning.global_batch(next(job0.train_iter), job0.mesh))
  assert float(plain["loss"]) != float(first["loss"])  # the masks are applied

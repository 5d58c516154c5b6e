"""End-to-end training: outputs, kill -9 resume, meshes, SIGTERM and two-host runs.

Each run is a real `python -m jaxdistill.main` subprocess on the tiny config (tests/train_utils.py).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import portpicker
import pytest

from tests import train_utils as tu


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted tiny hybrid run, shared by the tests that compare against it."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = tu.run_main(workdir)
  return workdir, proc


def test_run_writes_checkpoints_events_and_metrics(reference_run):
  workdir, proc = reference_run
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


def test_kill9_then_resume_matches_uninterrupted(reference_run, tmp_path):
  reference_dir, _ = reference_run
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(tu.main_command(workdir), cwd=tu.REPO, env=tu.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, 12, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))

  resumed = tu.run_main(workdir)
  assert "Resumed from step" in resumed.stderr
  expected, actual = tu.read_final_params(reference_dir), tu.read_final_params(workdir)
  assert expected.keys() == actual.keys()
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6, err_msg=key)
  reference_metrics = json.load(open(os.path.join(reference_dir, "metrics.json")))
  resumed_metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert resumed_metrics["dev_accuracy"] == reference_metrics["dev_accuracy"]
  assert resumed_metrics["test_accuracy"] == reference_metrics["test_accuracy"]


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
  reference_dir, _ = reference_run
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


@pytest.mark.slow
def test_two_processes_train_to_identical_parameters(tmp_path):
  port = portpicker.pick_unused_port()
  workdir = str(tmp_path / "multihost")
  procs = []
  for process_id in range(2):
    command = tu.main_command(workdir, train__steps=8, train__checkpoint_every=4, eval__every=8) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={process_id}"]
    procs.append(subprocess.Popen(command, cwd=tu.REPO, env=tu.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
  fingerprints = [[line for line in err.splitlines() if "parameter fingerprint" in line] for _, err in outputs]
  assert all(len(f) == 1 for f in fingerprints), fingerprints
  values = [f[0].rsplit(" ", 1)[-1] for f in fingerprints]
  assert values[0] == values[1]
  assert "host 0 of 2" in outputs[0][1] and "host 1 of 2" in outputs[1][1]
  assert "mesh: data=2 x fsdp=1 x tensor=1 (2 devices)" in outputs[0][0]


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
  assert metrics["dev_rationale_perplexity"] > 1.0
  assert "test_accuracy=" in proc.stdout.strip().splitlines()[-1]

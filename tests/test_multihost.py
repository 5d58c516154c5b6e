"""Multi-host training: parameters sharded across processes, and resuming a checkpoint on another mesh.

Each host is a `python -m jaxdistill.main` subprocess on CPU devices, joined by `jax.distributed`
over gloo (jaxdistill/main.py), in the tiny config of tests/train_utils.py. Every test here is slow
(each process compiles on the 2 shared cores); the times are measured on them, loaded by other jobs:
the whole file takes 12-14 min.

The runs compared with each other train on unpacked rows (data.packing=False): with packing, each
host packs its own share of the records into rows, so the global batch of 4 hosts holds other rows
than one host's and only the loss trends would compare. Unpacked, every step's global batch holds
the same records whatever the host count (host k reads records k::4 of the same shuffled stream).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import portpicker
import pytest

from tests import train_utils as tu

pytestmark = pytest.mark.slow

# 12 steps, losses logged every 3 and checkpoints every 6, so that a run resumed from step 6 logs
# the same averages (steps 7-9, 10-12) as the uninterrupted run.
RUN = dict(train__steps=12, train__log_every=3, train__checkpoint_every=6, train__keep_checkpoints=4,
           eval__every=12, eval__write_predictions=False, data__packing=False,
           data__demo__num_dev=16, data__demo__num_test=16)
DATA2_FSDP2 = dict(mesh__data=2, mesh__fsdp=2, mesh__tensor=1)
RESUMED_FROM = 6

# Runs on 4 processes and on one process, or resumed on another mesh, agree to float tolerance and not
# bit for bit: gloo's cross-process all-reduce adds the hosts' partial sums in another order than the
# in-process CPU all-reduce (measured: summing 4 float32 vectors over 4 devices, one process matches
# ((a+b)+c)+d in every element, 4 gloo processes in 776 of 1000 elements; the fingerprints differ even
# with one record per host, where each device holds the same rows in both runs), and another mesh
# reduces over other groups of devices. Measured after 12 steps: the (model, optimizer) states differ by
# at most 3e-6 and the logged losses by 3e-7 relative, while one step moves a parameter by 5e-4 on
# average (6e-5 for the slowest tensor), so ATOL tells a float-order difference from other data.
ATOL = 2e-5
LOSS_RTOL = 1e-5


class Host:
  """One finished process of a multi-host run: its exit status and output."""

  def __init__(self, returncode: int, stdout: str, stderr: str):
    self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

  def fingerprint(self) -> str:
    """The digest of the whole final parameters the process logs (train.finalize)."""
    found = re.findall(r"parameter fingerprint \(process \d+\): (\w+)", self.stderr)
    assert len(found) == 1, self.stderr[-3000:]
    return found[0]

  def last_error_line(self) -> str:
    return self.stderr.strip().splitlines()[-1]


def launch(workdir: str, logs: str, num_processes: int, devices: int = 1, timeout: int = 1200, **overrides
           ) -> list[Host]:
  """Runs `num_processes` main processes of one job (each with `devices` CPU devices) to the end.
  Output goes to files under `logs`: a pipe nobody reads while another process is awaited fills up
  and blocks its writer, and with it every host's next collective."""
  os.makedirs(logs, exist_ok=True)
  port = portpicker.pick_unused_port()
  procs, paths = [], []
  for k in range(num_processes):
    command = tu.main_command(workdir, **overrides) + [
        f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={k}"]
    paths.append((os.path.join(logs, f"{k}.out"), os.path.join(logs, f"{k}.err")))
    with open(paths[-1][0], "w", encoding="utf-8") as out, open(paths[-1][1], "w", encoding="utf-8") as err:
      procs.append(subprocess.Popen(command, cwd=tu.REPO, env=tu.env(devices), stdout=out, stderr=err, text=True))
  deadline = time.monotonic() + timeout
  try:
    for proc in procs:  # a host that died leaves the others waiting in a collective: the deadline ends them
      proc.wait(timeout=max(deadline - time.monotonic(), 1))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  hosts = []
  for proc, (out, err) in zip(procs, paths):
    with open(out, encoding="utf-8") as f, open(err, encoding="utf-8") as g:
      hosts.append(Host(proc.returncode, f.read(), g.read()))
  return hosts


def run_one(workdir: str, devices: int, **overrides) -> Host:
  proc = subprocess.run(tu.main_command(workdir, **overrides), cwd=tu.REPO, env=tu.env(devices),
                        capture_output=True, text=True, timeout=900)
  return Host(proc.returncode, proc.stdout, proc.stderr)


def assert_finished(hosts: list[Host]) -> None:
  for k, host in enumerate(hosts):
    assert host.returncode == 0, f"process {k}:\n{host.stdout[-2000:]}\n{host.stderr[-6000:]}"


def read_state(workdir: str, step: int) -> dict[str, np.ndarray]:
  """The (model, optimizer) state of checkpoint `step`, whole, onto this process's one device (the
  checkpoint's own shardings name devices of the run that saved it)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  flat = jax.tree_util.tree_flatten_with_path(checkpointer.restore(path, target))[0]
  return {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat}


def assert_states_close(workdir: str, reference: str, step: int) -> None:
  actual, expected = read_state(workdir, step), read_state(reference, step)
  assert actual.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=ATOL, err_msg=key)


def assert_losses_close(workdir: str, reference: str, steps=None) -> None:
  """train/loss (averages over log_every steps) at `steps` (default: all the reference logged)."""
  actual, expected = tu.read_scalars(workdir, "train/loss"), tu.read_scalars(reference, "train/loss")
  steps = sorted(expected) if steps is None else steps
  assert sorted(actual) == steps and set(steps) <= set(expected), (sorted(actual), sorted(expected))
  np.testing.assert_allclose([actual[s] for s in steps], [expected[s] for s in steps], rtol=LOSS_RTOL)


def metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    return json.load(f)


def stopped_after(source: str, step: int, workdir: str) -> str:
  """`workdir` as a run of `source`'s command killed right after its step-`step` checkpoint committed
  would leave it: the workdir fingerprint, the tokenizer and that checkpoint (no best model: the first
  dev evaluation is at step 12). Copied rather than killed, so every resume starts from the same step."""
  os.makedirs(os.path.join(workdir, "checkpoints"))
  shutil.copy(os.path.join(source, "fingerprint.json"), workdir)
  shutil.copytree(os.path.join(source, "tokenizer"), os.path.join(workdir, "tokenizer"))
  shutil.copytree(os.path.join(source, "checkpoints", str(step)), os.path.join(workdir, "checkpoints", str(step)))
  return workdir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """One process with 4 CPU devices, mesh data=2 x fsdp=2 (~1.5 min)."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  host = run_one(workdir, devices=4, **RUN, **DATA2_FSDP2)
  assert_finished([host])
  return workdir, host


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory):
  """4 processes of one CPU device each, mesh data=2 x fsdp=2: each parameter is split over 2 hosts
  (fsdp) and that pair's copy is replicated on the other 2 (data) (~4 min)."""
  workdir = str(tmp_path_factory.mktemp("four_processes"))
  hosts = launch(workdir, workdir + ".logs", 4, **RUN, **DATA2_FSDP2)
  assert_finished(hosts)
  return workdir, hosts


def test_four_processes_shard_over_hosts_and_match_one_process(four_processes, one_process):
  """4 hosts, parameters sharded across them, train as one process on the same mesh shape does."""
  workdir, hosts = four_processes
  reference, _ = one_process
  for k, host in enumerate(hosts):
    assert "mesh: data=2 x fsdp=2 x tensor=1 (4 devices)" in host.stdout
    assert f"host {k} of 4: reads training records {k}::4 of 160 examples" in host.stderr
  # Each fingerprint digests the parameters as gathered on that host; the two data-parallel pairs
  # hold separate copies of every shard, so equal digests mean the replicas stayed identical.
  assert len({host.fingerprint() for host in hosts}) == 1, [host.fingerprint() for host in hosts]
  assert_losses_close(workdir, reference)
  assert_states_close(workdir, reference, RUN["train__steps"])
  ours, theirs = metrics(workdir), metrics(reference)
  assert ours["mesh"] == theirs["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert ours["best_step"] == theirs["best_step"] == RUN["train__steps"]
  assert ours["dev_accuracy"] == theirs["dev_accuracy"]
  np.testing.assert_allclose(ours["dev_rationale_perplexity"], theirs["dev_rationale_perplexity"], rtol=1e-5)
  np.testing.assert_allclose(ours["test_rationale_perplexity"], theirs["test_rationale_perplexity"], rtol=1e-5)
  # Process 0 exported the whole model although it holds half of each sharded parameter.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  exported, expected = (load_file(os.path.join(w, "hf", "model.safetensors")) for w in (workdir, reference))
  assert exported.keys() == expected.keys()
  for name in expected:
    np.testing.assert_allclose(exported[name], expected[name], rtol=0, atol=ATOL, err_msg=name)


def test_resume_on_another_mesh_continues_the_loss_curve(one_process, tmp_path):
  """Stopped at step 6 on 4 devices (data=2 x fsdp=2), resumed on 2 devices with tensor=2: Orbax reads
  each array into the new shardings (embedding dims no longer split, heads and MLP dims split), and
  the run continues the uninterrupted run's losses and ends at its parameters (~1 min)."""
  reference, _ = one_process
  workdir = stopped_after(reference, RESUMED_FROM, str(tmp_path / "resumed"))
  mesh_b = dict(mesh__data=1, mesh__fsdp=1, mesh__tensor=2)
  # The mesh is a layout, not another experiment; the objective is another experiment.
  refused = run_one(workdir, devices=2, **RUN, **mesh_b, objective__alpha=0.3)
  assert refused.returncode == 1
  assert refused.last_error_line().startswith(f"error: {workdir} was made with another config or data: "
                                              "objective.alpha (0.5 -> 0.3)."), refused.last_error_line()
  assert "mesh." not in refused.last_error_line() and "Traceback" not in refused.stderr

  resumed = run_one(workdir, devices=2, **RUN, **mesh_b)
  assert_finished([resumed])
  assert "mesh: data=1 x fsdp=1 x tensor=2 (2 devices)" in resumed.stdout
  assert f"Resumed from step {RESUMED_FROM}" in resumed.stderr
  with open(os.path.join(workdir, "fingerprint.json"), encoding="utf-8") as f:
    assert json.load(f)["changes"] == [], "a mesh change is not a config change"
  assert_losses_close(workdir, reference, steps=[9, 12])
  assert_states_close(workdir, reference, RUN["train__steps"])
  np.testing.assert_allclose(metrics(workdir)["dev_rationale_perplexity"],
                             metrics(reference)["dev_rationale_perplexity"], rtol=1e-5)


def test_four_processes_resume_on_another_mesh(four_processes, tmp_path):
  """Stopped at step 6 with data=2 x fsdp=2 over 4 hosts, resumed by 4 hosts with fsdp=4: each host now
  holds a quarter of every sharded parameter, read from shards other hosts saved (3-4 min)."""
  reference, _ = four_processes
  workdir = stopped_after(reference, RESUMED_FROM, str(tmp_path / "resumed"))
  hosts = launch(workdir, str(tmp_path / "logs"), 4, **RUN, mesh__data=1, mesh__fsdp=4, mesh__tensor=1)
  assert_finished(hosts)
  for host in hosts:
    assert "mesh: data=1 x fsdp=4 x tensor=1 (4 devices)" in host.stdout
    assert f"Resumed from step {RESUMED_FROM}" in host.stderr
  assert len({host.fingerprint() for host in hosts}) == 1
  assert_losses_close(workdir, reference, steps=[9, 12])
  assert_states_close(workdir, reference, RUN["train__steps"])


def test_resume_with_another_process_count_is_refused(four_processes, tmp_path):
  """The data iterator's state is per host (grain: data/process_K-of-4.json, each host's position in
  its own share of the records), so a 4-process checkpoint cannot be resumed by 1 process, even on the
  same mesh; the refusal says so in one line instead of grain's missing-file error (~35 s)."""
  reference, _ = four_processes
  workdir = stopped_after(reference, RESUMED_FROM, str(tmp_path / "resumed"))
  refused = run_one(workdir, devices=4, **RUN, **DATA2_FSDP2)
  assert refused.returncode == 1
  checkpoint_dir = os.path.join(workdir, "checkpoints", str(RESUMED_FROM))
  assert refused.last_error_line() == (
      f"error: {checkpoint_dir}: the checkpoint of step {RESUMED_FROM} was saved by 4 processes and this run "
      "has 1; the data iterator's state is per process (each host's position in its own share of the training "
      "records), so resume it with --num_processes=4 (any mesh), or use a new --workdir")
  assert "Traceback" not in refused.stderr
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(RESUMED_FROM)]


def test_two_processes_train_to_identical_parameters(tmp_path):
  """Two hosts with packed rows, parameters replicated (data=2): each host's copy ends the same (~2 min)."""
  workdir = str(tmp_path / "multihost")
  hosts = launch(workdir, str(tmp_path / "logs"), 2, train__steps=8, train__checkpoint_every=4, eval__every=8)
  assert_finished(hosts)
  assert hosts[0].fingerprint() == hosts[1].fingerprint()
  assert "host 0 of 2" in hosts[0].stderr and "host 1 of 2" in hosts[1].stderr
  assert "mesh: data=2 x fsdp=1 x tensor=1 (2 devices)" in hosts[0].stdout

"""launch/: the TPU VM, GKE (xpk) and Slurm launchers.

Their dry runs (the commands, in order, with the project command and its overrides unchanged), their
errors for bad input and missing tools, and what their commands do when they run: against stand-in
gcloud / xpk / sbatch / srun / curl / python executables that record their arguments, and (slow) the
generated sbatch script training jaxdistill.main for real under a stand-in srun.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import train_utils as tu

LAUNCH = os.path.join(tu.REPO, "launch")
WORKDIR = "gs://bucket/runs/hybrid"
# Overrides passed through verbatim: one with spaces and commas, one whose value starts with '-'.
SPACED = "--config.name=tiny run, with commas"
OVERRIDES = ["--config.train.steps=100", SPACED, "--config.train.label_smoothing=-0.0"]
PROJECT_ARGV = ["-m", "jaxdistill.main", "--config=configs/hybrid.py", f"--workdir={WORKDIR}", *OVERRIDES]

TPU = ["--name=distill-1", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
       "--runtime-version=v2-alpha-tpuv5-lite", "--config=configs/hybrid.py", f"--workdir={WORKDIR}", *OVERRIDES]
XPK = ["--cluster=tpu-cluster", "--workload=distill-1", "--tpu-type=v5litepod-16", "--num-slices=2",
       "--config=configs/hybrid.py", f"--workdir={WORKDIR}", *OVERRIDES]
SLURM = ["--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--config=configs/hybrid.py", "--workdir=runs/hybrid",
         *OVERRIDES]


def launcher(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs a launcher; by default with an empty PATH, so that no real gcloud / xpk / sbatch can ever be called."""
  if env is None:
    env = dict(os.environ, PATH=os.path.join(tu.REPO, "launch", "no-such-dir"))
  return subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        env=env, cwd=tu.REPO, timeout=120)


def dry_run(script: str, *args: str) -> list[list[str]]:
  """The commands a dry run prints, each split as a shell would (comment lines dropped)."""
  proc = launcher(script, "--dry-run", *args)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")]


def index_of(commands: list[list[str]], *prefix: str) -> int:
  matches = [i for i, c in enumerate(commands) if c[:len(prefix)] == list(prefix)]
  assert len(matches) == 1, f"{prefix}: {len(matches)} matches in {commands}"
  return matches[0]


def flag(command: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"{name}=")]
  assert len(values) == 1, f"{name} in {command}"
  return values[0]


def contains_run(tokens: list[str], run: list[str]) -> bool:
  return any(tokens[i:i + len(run)] == run for i in range(len(tokens)))


# ---------------------------------------------------------------------------------------------
# Stand-in executables: each records its argv (one JSON list a line) in $STUB_LOG, then acts.

STUB = """#!{python}
import json, os, shutil, sys
name, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(json.dumps([name, *argv]) + "\\n")
{body}
"""

BODIES = {
    "gcloud": """
if argv[:2] == ["storage", "cp"]:  # gs://X -> $STUB_GCS/X
  target = os.path.join(os.environ["STUB_GCS"], argv[3][len("gs://"):])
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.copy(argv[2], target)
elif "describe" in argv:  # the queued resource's states, one per poll
  states = os.environ.get("STUB_STATES", "ACTIVE").split(",")
  polls = sum(1 for line in open(os.environ["STUB_LOG"]) if "describe" in json.loads(line))
  print(states[min(polls, len(states)) - 1])
elif "ssh" in argv and "export TPU_NAME" in argv[-1]:  # the run step
  sys.exit(int(os.environ.get("STUB_RUN_EXIT", "0")))
""",
    "xpk": """
if any(a.startswith("--wait-for-job-completion") for a in argv):
  sys.exit(int(os.environ.get("STUB_WAIT_EXIT", "0")))
""",
    "sbatch": """
shutil.copy(argv[-1], os.environ["STUB_LOG"] + ".sbatch")
print("Submitted batch job 42")
""",
    "curl": """
print(os.environ["STUB_WORKER"])
""",
    "python": """
if argv[:3] == ["-m", "pip", "install"]:
  sys.exit(0)
print(f"training on worker {os.environ.get('STUB_WORKER')} with TPU_NAME={os.environ.get('TPU_NAME')}", flush=True)
print("a warning on stderr", file=sys.stderr)
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
""",
    "srun": """
import itertools
command = list(itertools.dropwhile(lambda a: a.startswith("--"), argv))
os.environ.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="1", SLURM_PROCID="0",
                  SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="1")
os.execv(command[0], command)
""",
}


def make_stub(directory: str, name: str, kind: str | None = None) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  with open(path, "w") as f:
    f.write(STUB.format(python=sys.executable, body=BODIES[kind or name]))
  os.chmod(path, 0o755)
  return path


def stub_env(tmp_path, *tools: str, system_path: bool = False, **extra) -> dict:
  """PATH holds the stand-ins (first) and, with system_path, the system's tools (bash, tee, ...)."""
  bin_dir = str(tmp_path / "bin")
  for tool in tools:
    make_stub(bin_dir, tool)
  env = dict(os.environ, STUB_LOG=str(tmp_path / "calls.jsonl"), STUB_GCS=str(tmp_path / "gcs"), **extra)
  env["PATH"] = bin_dir + (os.pathsep + "/usr/bin" + os.pathsep + "/bin" if system_path else "")
  return env


def calls(tmp_path) -> list[list[str]]:
  path = tmp_path / "calls.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# TPU VM / queued resource


def test_tpu_dry_run_creates_installs_runs_on_every_worker_then_deletes():
  commands = dry_run("tpu_vm.py", *TPU, "--spot", "--", "--extra_flag=x y")
  create = index_of(commands, "gcloud", "compute", "tpus", "queued-resources", "create")
  describe = index_of(commands, "gcloud", "compute", "tpus", "queued-resources", "describe")
  archive = index_of(commands, "git", "-C", tu.REPO, "archive")
  scp = index_of(commands, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  delete = index_of(commands, "gcloud", "compute", "tpus", "queued-resources", "delete")
  ssh = [i for i, c in enumerate(commands) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert len(ssh) == 2 and len(commands) == 7
  install, run = ssh
  assert create < describe < archive < scp < install < run < delete

  assert commands[create][5] == "distill-1"
  assert flag(commands[create], "--node-id") == "distill-1"
  assert flag(commands[create], "--accelerator-type") == "v5litepod-16"
  assert flag(commands[create], "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in commands[create] and "--reserved" not in commands[create]
  assert "--force" in commands[delete]
  for i in (scp, install, run):  # every worker: one process per host
    assert flag(commands[i], "--worker") == "all"
  assert flag(commands[archive], "--output") == commands[scp][5]

  script = flag(commands[run], "--command")
  tokens = shlex.split(script)
  assert contains_run(tokens, PROJECT_ARGV + ["--extra_flag=x y"])
  assert f"{WORKDIR}/logs/" in script
  assert "export TPU_NAME=distill-1" in script
  assert "uv" in flag(commands[install], "--command") and "jax[tpu]" in flag(commands[install], "--command")
  for i in (install, run):
    check = subprocess.run(["bash", "-n", "-c", flag(commands[i], "--command")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_tpu_keep_skips_delete_and_steps_run_alone():
  kept = dry_run("tpu_vm.py", *TPU, "--keep")
  assert not any("delete" in c for c in kept)
  assert any("queued-resources" in c and "create" in c for c in kept)

  assert dry_run("tpu_vm.py", "delete", "--name=distill-1", "--zone=us-west4-a") == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "distill-1", "--zone=us-west4-a", "--force",
       "--quiet"]]
  created = dry_run("tpu_vm.py", "create", *TPU[:4], "--project=my-proj")
  assert [c[4] for c in created] == ["create", "describe"]
  assert all("--project=my-proj" in c for c in created)
  (run,) = dry_run("tpu_vm.py", "run", *TPU)
  assert run[4] == "ssh" and flag(run, "--worker") == "all"
  assert contains_run(shlex.split(flag(run, "--command")), PROJECT_ARGV)


def test_tpu_install_from_a_git_url_clones_on_the_workers():
  (install,) = dry_run("tpu_vm.py", "install", "--name=distill-1", "--zone=us-west4-a",
                       "--source=https://example.com/jaxdistill.git", "--ref=v1.2")
  script = flag(install, "--command")
  assert "git clone --quiet https://example.com/jaxdistill.git" in script
  assert "fetch --quiet origin v1.2" in script and "checkout --quiet --detach FETCH_HEAD" in script
  assert flag(install, "--worker") == "all"


@pytest.mark.parametrize("worker", ["0", "1"])
def test_tpu_run_script_on_a_worker(tmp_path, worker):
  """The run step's remote script, run here as a worker would: the command gets its argv intact, worker 0
  streams its output, every worker's log lands under WORKDIR/logs/, the command's exit status is the script's."""
  (run,) = dry_run("tpu_vm.py", "run", *TPU)
  home = tmp_path / "home"
  make_stub(str(home / "jaxdistill-venv" / "bin"), "python")
  (home / "jaxdistill").mkdir()
  env = stub_env(tmp_path, "curl", "gcloud", system_path=True, HOME=str(home), STUB_WORKER=worker, STUB_EXIT="3")
  proc = subprocess.run(["bash", "-c", flag(run, "--command")], capture_output=True, text=True, env=env, timeout=60)

  assert proc.returncode == 3, proc.stderr
  log = calls(tmp_path)
  assert [c[1:] for c in log if c[0] == "python"] == [PROJECT_ARGV[:]]
  line = f"training on worker {worker} with TPU_NAME=distill-1"
  assert (line in proc.stdout) == (worker == "0")
  (copied,) = (tmp_path / "gcs" / "bucket" / "runs" / "hybrid" / "logs").glob(f"distill-1-*/worker-{worker}.log")
  assert line in copied.read_text() and "a warning on stderr" in copied.read_text()


def test_tpu_launch_with_stub_gcloud_waits_runs_and_deletes(tmp_path):
  env = stub_env(tmp_path, "gcloud", STUB_STATES="WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE")
  proc = launcher("tpu_vm.py", *TPU, "--source=https://example.com/jaxdistill.git", "--poll-seconds=1", env=env)
  assert proc.returncode == 0, proc.stderr
  steps = [c[4] for c in calls(tmp_path)]
  assert steps == ["create", "describe", "describe", "describe", "ssh", "ssh", "delete"]
  assert "ACTIVE" in proc.stderr


@pytest.mark.parametrize("keep", [False, True])
def test_tpu_failed_run_still_deletes_unless_kept(tmp_path, keep):
  env = stub_env(tmp_path, "gcloud", STUB_RUN_EXIT="7")
  proc = launcher("tpu_vm.py", *TPU, "--source=https://example.com/jaxdistill.git", *(["--keep"] if keep else []),
                  env=env)
  assert proc.returncode == 7
  steps = [c[4] for c in calls(tmp_path)]
  assert steps == ["create", "describe", "ssh", "ssh"] + ([] if keep else ["delete"])


def test_tpu_failed_queued_resource_stops_and_deletes(tmp_path):
  env = stub_env(tmp_path, "gcloud", STUB_STATES="ACCEPTED,FAILED")
  proc = launcher("tpu_vm.py", *TPU, "--source=https://example.com/jaxdistill.git", "--poll-seconds=1", env=env)
  assert proc.returncode != 0
  assert "queued resource distill-1 is FAILED" in proc.stderr
  assert [c[4] for c in calls(tmp_path)] == ["create", "describe", "describe", "delete"]


# ---------------------------------------------------------------------------------------------
# GKE through xpk


def test_xpk_dry_run_with_this_checkout_on_a_base_image():
  commands = dry_run("gke_xpk.py", *XPK, "--max-restarts=3")
  create = index_of(commands, "xpk", "workload", "create")
  wait = index_of(commands, "xpk", "workload", "list")
  delete = index_of(commands, "xpk", "workload", "delete")
  archive = index_of(commands, "git", "-C", tu.REPO, "archive")
  assert archive < create < wait < delete == len(commands) - 1

  c = commands[create]
  assert flag(c, "--cluster") == "tpu-cluster" and flag(c, "--workload") == "distill-1"
  assert flag(c, "--tpu-type") == "v5litepod-16" and flag(c, "--num-slices") == "2"
  assert flag(c, "--max-restarts") == "3"
  assert flag(c, "--base-docker-image") == "python:3.11"
  script_dir = flag(c, "--script-dir")
  assert commands[create - 1] == ["tar", "-xf", f"{script_dir}.tar", "-C", script_dir]
  assert c[c.index("--env") + 1] == "TPU_NAME=distill-1"
  tokens = shlex.split(flag(c, "--command"))
  assert tokens[:6] == ["python3", "-m", "pip", "install", "--quiet", "-e"]
  assert contains_run(tokens, ["python3", *PROJECT_ARGV])
  assert flag(commands[wait], "--wait-for-job-completion") == "distill-1"
  assert flag(commands[delete], "--workload") == "distill-1"


def test_xpk_docker_image_runs_the_command_as_is_and_keep_skips_delete():
  commands = dry_run("gke_xpk.py", *XPK, "--docker-image=gcr.io/p/jaxdistill:1", "--keep")
  assert [c[:3] for c in commands] == [["xpk", "workload", "create"], ["xpk", "workload", "list"]]
  assert shlex.split(flag(commands[0], "--command")) == ["python3", *PROJECT_ARGV]
  assert flag(commands[0], "--docker-image") == "gcr.io/p/jaxdistill:1"
  assert dry_run("gke_xpk.py", "list", "--cluster=tpu-cluster", "--zone=us-east5-b") == [
      ["xpk", "workload", "list", "--cluster=tpu-cluster", "--zone=us-east5-b"]]


@pytest.mark.parametrize("image", ["--docker-image=gcr.io/p/jaxdistill:1", "--base-docker-image=python:3.12"])
def test_xpk_container_command_runs(tmp_path, image):
  """The --command a container runs (in the base image's case: installing the checkout first) gets the
  project argv intact."""
  create = dry_run("gke_xpk.py", "create", *XPK, image)[-1]
  env = stub_env(tmp_path, system_path=True)
  make_stub(str(tmp_path / "bin"), "python3", "python")
  proc = subprocess.run(["bash", "-c", flag(create, "--command")], capture_output=True, text=True, env=env,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  base = image.startswith("--base-docker-image")
  install = [["-m", "pip", "install", "--quiet", "-e", ".", "jax[tpu]"]] if base else []
  assert [c[1:] for c in calls(tmp_path)] == install + [PROJECT_ARGV]


@pytest.mark.parametrize("wait_exit,keep", [(0, False), (125, False), (125, True)])
def test_xpk_launch_with_stub_xpk(tmp_path, wait_exit, keep):
  env = stub_env(tmp_path, "xpk", STUB_WAIT_EXIT=str(wait_exit))
  proc = launcher("gke_xpk.py", *XPK, "--docker-image=img", *(["--keep"] if keep else []), env=env)
  assert proc.returncode == wait_exit, proc.stderr
  assert [c[2] for c in calls(tmp_path)] == ["create", "list"] + ([] if keep else ["delete"])


# ---------------------------------------------------------------------------------------------
# Slurm


def split_sbatch_output(stdout: str) -> tuple[str, list[str]]:
  """A Slurm dry run: the sbatch file, then the sbatch command as its last line."""
  *script, last = stdout.rstrip("\n").split("\n")
  return "\n".join(script) + "\n", shlex.split(last)


def test_slurm_dry_run_prints_one_task_per_node_and_one_srun():
  proc = launcher("slurm.py", *SLURM, "--setup=module load cuda/12", "--sbatch-arg=--qos=high", "--time=2:00:00",
                  "--dry-run", "--", "--extra_flag=x y")
  assert proc.returncode == 0, proc.stderr
  script, sbatch = split_sbatch_output(proc.stdout)
  assert script.startswith("#!/bin/bash\n")
  directives = re.findall(r"^#SBATCH (\S+)$", script, re.M)
  assert {"--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--qos=high",
          "--time=2:00:00"} <= set(directives)
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script.splitlines()
  (srun,) = [shlex.split(line) for line in script.splitlines() if line.startswith("srun")]
  assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--label"]
  assert srun[3:] == ["python3", "-m", "jaxdistill.main", "--config=configs/hybrid.py", "--workdir=runs/hybrid",
                      *OVERRIDES, "--extra_flag=x y"]
  assert script.index("module load cuda/12") < script.index("srun")
  assert sbatch == ["sbatch", os.path.join(tu.REPO, "runs", "hybrid", "slurm", "jaxdistill-hybrid.sbatch")]
  output = [d for d in directives if d.startswith("--output=")]
  assert output == [f"--output={os.path.join(tu.REPO, 'runs', 'hybrid', 'slurm', '%x-%j.out')}"]


def srun_line(stdout: str) -> list[str]:
  script, _ = split_sbatch_output(stdout)
  (srun,) = [shlex.split(line) for line in script.splitlines() if line.startswith("srun")]
  return srun


def test_slurm_other_entry_points_and_a_gs_workdir():
  study = launcher("slurm.py", "--dry-run", "--module=jaxdistill.study", "--config=configs/studies/pst.py",
                   "--workdir=gs://bucket/study", "--", "--only=a,b")
  assert srun_line(study.stdout)[3:] == ["python3", "-m", "jaxdistill.study", "--config=configs/studies/pst.py",
                                         "--workdir=gs://bucket/study", "--only=a,b"]
  _, sbatch = split_sbatch_output(study.stdout)  # logs stay on the cluster's disk
  assert sbatch == ["sbatch", os.path.join(tu.REPO, "runs", "slurm-logs", "jaxdistill-pst.sbatch")]
  teach = launcher("slurm.py", "--dry-run", "--module=jaxdistill.teach", "--config=configs/teach.py",
                   "--workdir=runs/teach")
  assert srun_line(teach.stdout)[3:] == ["python3", "-m", "jaxdistill.teach", "--config=configs/teach.py"]


def test_slurm_submits_the_script_it_prints(tmp_path):
  args = [*SLURM, f"--log-dir={tmp_path / 'logs'}"]
  expected, sbatch = split_sbatch_output(launcher("slurm.py", *args, "--dry-run").stdout)
  assert not (tmp_path / "logs").exists()  # a dry run writes nothing
  proc = launcher("slurm.py", *args, env=stub_env(tmp_path, "sbatch"))
  assert proc.returncode == 0, proc.stderr
  assert calls(tmp_path) == [sbatch]
  assert (tmp_path / "calls.jsonl.sbatch").read_text() == expected
  assert (tmp_path / "logs" / "jaxdistill-hybrid.sbatch").read_text() == expected


def test_slurm_script_runs_the_command_once_per_node(tmp_path):
  args = [*SLURM, f"--python={make_stub(str(tmp_path / 'venv'), 'python')}", "--setup=echo set-up done"]
  script, _ = split_sbatch_output(launcher("slurm.py", *args, "--dry-run").stdout)
  env = stub_env(tmp_path, "srun", system_path=True)
  proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
  assert proc.returncode == 0, proc.stderr
  log = calls(tmp_path)
  assert [c[0] for c in log] == ["srun", "python"]
  assert log[1][1:] == ["-m", "jaxdistill.main", "--config=configs/hybrid.py", "--workdir=runs/hybrid", *OVERRIDES]
  assert proc.stdout.startswith("set-up done\n")


@pytest.mark.slow  # trains the tiny hybrid config for 4 steps: ~75 s on 2 shared CPU cores
def test_slurm_script_trains_under_srun(tmp_path):
  """The generated script, run as Slurm would on one node with 2 GPUs: jaxdistill.main's
  jax.distributed.initialize() finds the job through Slurm's variables (the coordinator port is derived from
  the job id), the process keeps both of its node's devices (not only SLURM_LOCALID's), and it trains with
  the overrides, spaces and commas included."""
  workdir = tmp_path / "run"
  overrides = [f"--config.{k}={v}" for k, v in tu.TINY_OVERRIDES.items()] + ["--config.train.steps=4",
                                                                            "--config.eval.every=4", SPACED]
  script, _ = split_sbatch_output(launcher(
      "slurm.py", "--dry-run", "--nodes=1", "--gpus-per-node=2", f"--python={sys.executable}",
      "--config=configs/hybrid.py", f"--workdir={workdir}", *overrides).stdout)
  make_stub(str(tmp_path / "bin"), "srun")
  env = tu.env(STUB_LOG=str(tmp_path / "calls.jsonl"))
  env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", "/bin"])
  proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  port = 4242 % 2**12 + 2**16 - 2**12  # JAX's Slurm coordinator port for the stand-in srun's SLURM_JOB_ID
  assert f"Connecting to JAX distributed service on localhost:{port}" in proc.stderr
  assert "JAX distributed initialized with visible devices: 0,1" in proc.stderr
  assert "name: tiny run, with commas" in proc.stderr
  assert json.loads((workdir / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------
# Errors


BAD_ARGUMENTS = [
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--workdir")], "--workdir is required"),
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--workdir")] + ["--workdir=/data/runs"], "must be a gs://"),
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--config=")], "--config is required"),
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--accelerator")] + ["--accelerator-type=v5litepod-big"],
     "is not a TPU type"),
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--accelerator")], "--accelerator-type is required"),
    ("tpu_vm.py", [a for a in TPU if not a.startswith("--name")] + ["--name=Distill_1"], "--name 'Distill_1'"),
    ("tpu_vm.py", [*TPU, "--spot", "--reserved"], "not allowed with argument"),
    ("tpu_vm.py", [*TPU, "--config.train.steps", "100"], "--config.KEY=VALUE"),
    ("tpu_vm.py", [*TPU, "--bogus=1"], "unrecognized arguments: --bogus=1"),
    ("tpu_vm.py", [*TPU, "--", "--dry-run"], "--dry-run after `--`"),
    ("tpu_vm.py", ["delete", "--name=distill-1", "--zone=z", "--config.train.steps=1"], "runs no project command"),
    ("tpu_vm.py", [a if a != "--config=configs/hybrid.py" else "--config=configs/hybird.py" for a in TPU],
     "no file configs/hybird.py"),
    ("gke_xpk.py", [a for a in XPK if not a.startswith("--workdir")] + ["--workdir=runs/x"], "must be a gs://"),
    ("gke_xpk.py", [a for a in XPK if not a.startswith("--tpu-type")] + ["--tpu-type=v9-16"], "is not a TPU type"),
    ("gke_xpk.py", [a for a in XPK if not a.startswith("--tpu-type")] + ["--tpu-type=v5p-2x2x"], "is not a TPU type"),
    ("gke_xpk.py", [a for a in XPK if not a.startswith("--workload")], "--workload is required"),
    ("gke_xpk.py", [a for a in XPK if not a.startswith("--num-slices")] + ["--num-slices=0"],
     "'0' is not a positive integer"),
    ("gke_xpk.py", [*XPK, "--docker-image=a", "--base-docker-image=b"], "not allowed with argument"),
    ("slurm.py", [a for a in SLURM if not a.startswith("--workdir")], "--workdir is required"),
    ("slurm.py", [*SLURM, "--nodes=0"], "'0' is not a positive integer"),
    ("slurm.py", [*SLURM, "--module=jaxdistill/main"], "is not a Python module name"),
    ("slurm.py", [*SLURM, "--sbatch-arg=qos=high"], "--sbatch-arg 'qos=high'"),
]


@pytest.mark.parametrize("script,args,message", BAD_ARGUMENTS)
def test_bad_arguments_fail_clearly(script, args, message):
  proc = launcher(script, "--dry-run", *args)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr
  assert proc.stdout == ""  # nothing printed as if it would run


@pytest.mark.parametrize("script,args,tool", [
    ("tpu_vm.py", TPU, "gcloud"),
    ("tpu_vm.py", ["delete", "--name=distill-1", "--zone=z"], "gcloud"),
    ("gke_xpk.py", XPK, "xpk"),
    ("slurm.py", SLURM, "sbatch"),
])
def test_missing_tool_fails_clearly(tmp_path, script, args, tool):
  env = dict(os.environ, PATH=str(tmp_path / "empty"))
  log_dir = tmp_path / "logs"
  proc = launcher(script, *args, *([f"--log-dir={log_dir}"] if script == "slurm.py" else []), env=env)
  assert proc.returncode != 0
  (line,) = proc.stderr.splitlines()
  assert line.startswith(f"launch/{script}: error: {tool} not found on PATH: ")
  assert "install" in line or "login node" in line
  assert proc.stdout == "" and not log_dir.exists()


@pytest.mark.parametrize("script,args", [("tpu_vm.py", TPU), ("gke_xpk.py", XPK), ("slurm.py", SLURM)])
def test_dry_run_needs_no_tool(tmp_path, script, args):
  env = dict(os.environ, PATH=str(tmp_path / "empty"))
  proc = launcher(script, *args, "--dry-run", env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip()

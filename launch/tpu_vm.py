"""Run a jaxdistill command on every host of a Cloud TPU slice, through a queued resource.

  python launch/tpu_vm.py [all|create|install|run|delete] --name=NAME --zone=ZONE \
      --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite \
      --config=configs/hybrid.py --workdir=gs://BUCKET/runs/hybrid [--config.KEY=VALUE ...] [--dry-run]

all (the default) does, in order:
  create   `gcloud compute tpus queued-resources create` (queued resource and node both named NAME),
           then poll its state until ACTIVE (FAILED or SUSPENDED stops the launch);
  install  put the code on every worker (this checkout's --ref packed with `git archive` and copied with
           `tpu-vm scp --worker=all`, or `git clone` of --source=URL at --ref), then a Python --python-version
           venv (made by uv) with the project installed editable plus jax[tpu];
  run      the project command on every worker at once (`tpu-vm ssh --worker=all`): one process per host,
           which calls jax.distributed.initialize() (TPU_NAME is exported for jaxdistill.main's check).
           Worker 0's output streams to this terminal; every worker's log is copied to
           WORKDIR/logs/RUN_ID/worker-N.log when the command ends, whatever its exit status;
  delete   `gcloud compute tpus queued-resources delete --force` (also after a failure or Ctrl-C), unless --keep.
Each step can also be run on its own (create, install, run, delete), e.g. to rerun on a kept slice.
With --dry-run every command is printed, one per line, and nothing runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time

import launchlib

ACTIONS = ("all", "create", "install", "run", "delete")
# On the workers: written unquoted into the remote scripts so that $HOME expands there, not here.
REMOTE_DIR = '"$HOME/jaxdistill"'
REMOTE_ARCHIVE = "jaxdistill.tar.gz"  # scp destination, relative to the remote home
REMOTE_VENV_PYTHON = '"$HOME/jaxdistill-venv/bin/python"'
REMOTE_UV = '"$HOME/.local/bin/uv"'
REMOTE_LOGS = '"$HOME/jaxdistill-logs"'
WORKER_ID_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
FAILED_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/tpu_vm.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Create a Cloud TPU slice (queued resource), install jaxdistill on every worker, run one "
                  "command on all of them, delete the slice.")
  parser.add_argument("action", nargs="?", default="all", choices=ACTIONS,
                      help="Which step(s) to run (default: all = create, install, run, delete).")
  tpu = parser.add_argument_group("the TPU slice")
  tpu.add_argument("--name", required=True, help="Queued resource and TPU node name.")
  tpu.add_argument("--zone", required=True, help="Zone, e.g. us-west4-a.")
  tpu.add_argument("--project", help="GCP project (default: gcloud's configured project).")
  tpu.add_argument("--accelerator-type", help="TPU type, e.g. v5litepod-16, v4-32, v6e-8 (create).")
  tpu.add_argument("--runtime-version", help="TPU software version, e.g. v2-alpha-tpuv5-lite (create); "
                                             "`gcloud compute tpus tpu-vm versions list --zone=ZONE` lists them.")
  capacity = tpu.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="Spot capacity (preemptible).")
  capacity.add_argument("--reserved", action="store_true", help="Capacity from the project's reservation.")
  tpu.add_argument("--poll-seconds", type=launchlib.positive_int, default=30,
                   help="How often to check the queued resource's state while waiting (default: %(default)s).")
  code = parser.add_argument_group("the code on the workers")
  code.add_argument("--source", default="local",
                    help="`local` (this checkout at --ref, packed with git archive: commit first) or a git URL "
                         "cloned on every worker. Default: %(default)s.")
  code.add_argument("--ref", default="HEAD", help="Commit, branch or tag to install (default: %(default)s).")
  code.add_argument("--python-version", default="3.11", help="Python of the workers' venv (default: %(default)s).")
  launchlib.add_project_arguments(parser, workdir_help="gs://BUCKET/PATH: the run's workdir, shared by all "
                                                       "hosts; worker logs go to WORKDIR/logs/.")
  parser.add_argument("--keep", action="store_true", help="Do not delete the slice at the end of `all`.")
  parser.add_argument("--dry-run", action="store_true", help="Print every command; run nothing.")
  return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  launchlib.check_resource_name(parser, "--name", args.name, max_len=63)
  if args.action in ("all", "create"):
    if not args.accelerator_type:
      parser.error(f"--accelerator-type is required to {args.action} (e.g. --accelerator-type=v5litepod-16)")
    launchlib.check_tpu_type(parser, "--accelerator-type", args.accelerator_type)
    if not args.runtime_version:
      parser.error(f"--runtime-version is required to {args.action} (e.g. v2-alpha-tpuv5-lite for v5litepod)")
  if args.action in ("all", "run"):
    launchlib.check_project_arguments(parser, args, gcs_workdir=True)
  elif args.overrides or args.passthrough:
    parser.error(f"{args.action} runs no project command: overrides and flags after -- belong to run or all")
  if args.action == "all" and args.source == "local":
    launchlib.check_config_in_checkout(parser, args.config)


# ---------------------------------------------------------------------------------------------
# Commands


def _scope(args) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def create_argv(args) -> list[str]:
  capacity = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
  return ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--node-id={args.name}",
          f"--accelerator-type={args.accelerator_type}", f"--runtime-version={args.runtime_version}",
          *_scope(args), *capacity]


def describe_argv(args) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_scope(args),
          "--format=value(state.state)"]


def delete_argv(args) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_scope(args), "--force",
          "--quiet"]


def ssh_argv(args, command: str) -> list[str]:
  """The same command on every worker of the slice, concurrently: one process per host."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_scope(args), "--worker=all",
          f"--command={command}"]


def local_archive(args) -> str:
  return os.path.join(tempfile.gettempdir(), f"jaxdistill-{args.name}.tar.gz")


def archive_argv(args) -> list[str]:
  return ["git", "-C", launchlib.REPO, "archive", "--format=tar.gz", f"--output={local_archive(args)}", args.ref]


def scp_argv(args) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_archive(args), f"{args.name}:{REMOTE_ARCHIVE}",
          *_scope(args), "--worker=all"]


def install_script(args) -> str:
  """Every worker: the code at REMOTE_DIR, then a venv with the project (editable) and jax[tpu]."""
  if args.source == "local":
    fetch = [f"rm -rf {REMOTE_DIR}", f"mkdir -p {REMOTE_DIR}", f'tar -xzf "$HOME/{REMOTE_ARCHIVE}" -C {REMOTE_DIR}']
  else:
    fetch = [f"test -d {REMOTE_DIR}/.git || git clone --quiet {shlex.quote(args.source)} {REMOTE_DIR}",
             f"git -C {REMOTE_DIR} fetch --quiet origin {shlex.quote(args.ref)}",
             f"git -C {REMOTE_DIR} checkout --quiet --detach FETCH_HEAD"]
  # TPU VM images ship an older system Python than the project needs (>= 3.11); uv fetches one.
  env = [f"test -x {REMOTE_UV} || curl -LsSf https://astral.sh/uv/install.sh | sh",
         f"test -x {REMOTE_VENV_PYTHON} || {REMOTE_UV} venv --quiet --python {shlex.quote(args.python_version)} "
         '"$HOME/jaxdistill-venv"',
         f"{REMOTE_UV} pip install --quiet --python {REMOTE_VENV_PYTHON} -e {REMOTE_DIR} 'jax[tpu]'"]
  return "; ".join(["set -e", *fetch, *env])


def run_script(args, run_id: str) -> str:
  """Every worker: the project command, its output in a log (worker 0 also streams it), the log to WORKDIR."""
  project = launchlib.project_argv(args)
  command = " ".join([REMOTE_VENV_PYTHON, shlex.join(project[1:])])
  log = f'{REMOTE_LOGS}/{run_id}-worker-"$W".log'
  destination = shlex.quote(f"{args.workdir.rstrip('/')}/logs/{run_id}/") + '"worker-$W.log"'
  return "; ".join([
      "set -o pipefail",  # worker 0's exit status is the command's, not tee's
      f"export TPU_NAME={shlex.quote(args.name)}",  # jaxdistill.main calls jax.distributed.initialize() when set
      f"cd {REMOTE_DIR} || exit 1",
      f"W=$(curl -sf -H 'Metadata-Flavor: Google' {WORKER_ID_URL}) || W=$(hostname)",
      f"mkdir -p {REMOTE_LOGS}",
      f'if [ "$W" = 0 ]; then {command} 2>&1 | tee {log}; else {command} > {log} 2>&1; fi',
      "RC=$?",
      f"gcloud storage cp {log} {destination}",
      "exit $RC",
  ])


# ---------------------------------------------------------------------------------------------
# Steps


def wait_until_active(runner: launchlib.Runner, args) -> None:
  if runner.dry_run:
    runner.note(f"repeated every {args.poll_seconds}s until the state is ACTIVE:")
    runner.run(describe_argv(args))
    return
  last = None
  while True:
    state = runner.output(describe_argv(args)).strip()
    if state != last:
      runner.note(f"{args.name}: {state or 'no state yet'}")
      last = state
    if state == "ACTIVE":
      return
    if state in FAILED_STATES:
      raise launchlib.LaunchError(f"queued resource {args.name} is {state}: see `gcloud compute tpus "
                                  f"queued-resources describe {args.name} --zone={args.zone}`")
    time.sleep(args.poll_seconds)


def install(runner: launchlib.Runner, args) -> None:
  if args.source == "local":
    runner.run(archive_argv(args))
    runner.run(scp_argv(args))
  runner.run(ssh_argv(args, install_script(args)))


def run(runner: launchlib.Runner, args) -> int:
  run_id = f"{args.name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
  runner.note(f"worker logs: {args.workdir.rstrip('/')}/logs/{run_id}/worker-N.log")
  return runner.run(ssh_argv(args, run_script(args, run_id)), check=False)


def delete(runner: launchlib.Runner, args, *, check: bool = True) -> None:
  returncode = runner.run(delete_argv(args), check=check)
  if returncode:
    runner.note(f"deleting {args.name} failed (exit status {returncode}): delete it yourself, "
                f"{' '.join(delete_argv(args))}")


def launch(runner: launchlib.Runner, args) -> int:
  if not runner.dry_run:
    launchlib.require_tools(["gcloud"] + (["git"] if args.source == "local" and args.action in ("all", "install")
                                           else []))
  if args.action == "create":
    runner.run(create_argv(args))
    wait_until_active(runner, args)
    return 0
  if args.action == "install":
    install(runner, args)
    return 0
  if args.action == "run":
    return run(runner, args)
  if args.action == "delete":
    delete(runner, args)
    return 0
  runner.run(create_argv(args))
  try:
    wait_until_active(runner, args)
    install(runner, args)
    return run(runner, args)
  finally:  # also on a failed step or Ctrl-C: an idle slice costs as much as a busy one
    if args.keep:
      runner.note(f"kept {args.name}; delete it with: python launch/tpu_vm.py delete --name={args.name} "
                  f"--zone={args.zone}" + (f" --project={args.project}" if args.project else ""))
    else:
      delete(runner, args, check=False)


def main(argv=None) -> int:
  parser = build_parser()
  args = launchlib.parse_args(parser, sys.argv[1:] if argv is None else argv)
  check_args(parser, args)
  return launchlib.main_guard(parser.prog, lambda: launch(launchlib.Runner(args.dry_run), args))


if __name__ == "__main__":
  sys.exit(main())

"""Submit a jaxdistill command to a Slurm GPU cluster: one process per node, each using all of its GPUs.

  python launch/slurm.py --nodes=2 --gpus-per-node=8 [--partition=P] [--time=4:00:00] \
      [--python=.venv/bin/python] [--setup='module load cuda'] \
      --config=configs/hybrid.py --workdir=runs/hybrid [--config.KEY=VALUE ...] [--dry-run]

Writes an sbatch script (--ntasks-per-node=1, --gpus-per-node=G; `srun` starts the project command once
per node, so jaxdistill.main's jax.distributed.initialize() finds the job through Slurm's variables) to
LOG_DIR/JOB_NAME.sbatch and submits it with `sbatch`. Every node's output goes to LOG_DIR/JOB_NAME-JOBID.out,
each line prefixed with its node's task number (srun --label). LOG_DIR defaults to WORKDIR/slurm (or
runs/slurm-logs in the repository when WORKDIR is a gs:// path). Relative paths are relative to --repo,
where the job starts. With --dry-run the script is printed, then the sbatch command; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

import launchlib


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/slurm.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Write and submit an sbatch script that runs one jaxdistill command on every node of the job.")
  job = parser.add_argument_group("the Slurm job")
  job.add_argument("--nodes", type=launchlib.positive_int, default=1, help="Nodes (default: %(default)s).")
  job.add_argument("--gpus-per-node", type=launchlib.positive_int, default=8,
                   help="GPUs per node, all used by the node's one process (default: %(default)s).")
  job.add_argument("--job-name", help="Default: jaxdistill-<the config's file name>.")
  job.add_argument("--partition")
  job.add_argument("--account")
  job.add_argument("--time", help="Time limit, e.g. 4:00:00.")
  job.add_argument("--cpus-per-task", type=launchlib.positive_int, help="CPUs for each node's process.")
  job.add_argument("--sbatch-arg", action="append", default=[], metavar="FLAG",
                   help="Another #SBATCH line, verbatim (repeatable), e.g. --sbatch-arg=--qos=high.")
  env = parser.add_argument_group("the environment on the nodes")
  env.add_argument("--repo", default=launchlib.REPO,
                   help="The project checkout as the nodes see it; the job starts there (default: this one).")
  env.add_argument("--python", default="python3",
                   help="Python with the project installed, e.g. .venv/bin/python (default: %(default)s).")
  env.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="A shell line run before the command (repeatable), e.g. --setup='module load cuda/12'.")
  env.add_argument("--log-dir", help="Where the sbatch script and the job's output go (default: WORKDIR/slurm, or "
                                          "runs/slurm-logs when WORKDIR is gs://...; relative to --repo).")
  launchlib.add_project_arguments(parser, workdir_help="The run's workdir: a path every node sees, or gs://...")
  parser.add_argument("--dry-run", action="store_true", help="Print the sbatch script and the sbatch command; "
                                                             "write and run nothing.")
  return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  launchlib.check_project_arguments(parser, args, gcs_workdir=False)
  if args.repo == launchlib.REPO:
    launchlib.check_config_in_checkout(parser, args.config)
  if args.job_name is None:
    stem = os.path.splitext(os.path.basename(args.config.split(":", 1)[0]))[0]
    args.job_name = f"jaxdistill-{stem}"
  if not re.fullmatch(r"[A-Za-z0-9][-_.A-Za-z0-9]*", args.job_name):
    parser.error(f"--job-name {args.job_name!r}: use letters, digits, '-', '_' and '.'")
  for flag in args.sbatch_arg:
    if not flag.startswith("--") or "\n" in flag:
      parser.error(f"--sbatch-arg {flag!r}: give one sbatch flag, e.g. --sbatch-arg=--qos=high")
  if any("\n" in line for line in args.setup):
    parser.error("--setup: give one line per --setup")


def log_dir(args) -> str:
  """Absolute (relative paths from --repo, where the job runs), since sbatch resolves --output elsewhere."""
  if args.log_dir:
    directory = args.log_dir
  elif "://" in args.workdir:
    directory = os.path.join("runs", "slurm-logs")
  else:
    directory = os.path.join(args.workdir, "slurm")
  return os.path.join(args.repo, directory)


def script_path(args) -> str:
  return os.path.join(log_dir(args), f"{args.job_name}.sbatch")


def sbatch_script(args) -> str:
  """The job: one task per node with all its GPUs; srun runs the project command once per node."""
  directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
                f"--gpus-per-node={args.gpus_per_node}", f"--output={os.path.join(log_dir(args), '%x-%j.out')}"]
  for flag, value in (("--partition", args.partition), ("--account", args.account), ("--time", args.time),
                      ("--cpus-per-task", args.cpus_per_task)):
    if value is not None:
      directives.append(f"{flag}={value}")
  directives += args.sbatch_arg
  device_ids = ",".join(str(i) for i in range(args.gpus_per_node))
  lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives),
           "",
           "set -eo pipefail",  # not -u: environment set-up scripts (module, activate) read unset variables
           f"cd {shlex.quote(args.repo)}",
           "# One process per node using all of its GPUs: JAX's Slurm detection would otherwise give each",
           "# process only GPU number SLURM_LOCALID (it assumes one process per GPU).",
           f"export JAX_LOCAL_DEVICE_IDS={device_ids}",
           *args.setup,
           shlex.join(["srun", "--kill-on-bad-exit=1", "--label", *launchlib.project_argv(args, args.python)])]
  return "\n".join(lines) + "\n"


def submit(runner: launchlib.Runner, args) -> int:
  script = sbatch_script(args)
  path = script_path(args)
  if runner.dry_run:
    print(script, end="")
  else:
    launchlib.require_tools(["sbatch"])
    os.makedirs(log_dir(args), exist_ok=True)  # sbatch does not create the --output directory
    with open(path, "w") as f:
      f.write(script)
    runner.note(f"wrote {path}")
  runner.run(["sbatch", path])
  if not runner.dry_run:
    runner.note(f"output: {os.path.join(log_dir(args), args.job_name)}-JOBID.out (squeue --me to follow the job)")
  return 0


def main(argv=None) -> int:
  parser = build_parser()
  args = launchlib.parse_args(parser, sys.argv[1:] if argv is None else argv)
  check_args(parser, args)
  return launchlib.main_guard(parser.prog, lambda: submit(launchlib.Runner(args.dry_run), args))


if __name__ == "__main__":
  sys.exit(main())

"""Run a jaxdistill command as a GKE TPU workload through xpk (one container per TPU host, every slice).

  python launch/gke_xpk.py [all|create|wait|list|delete] --cluster=CLUSTER --workload=NAME \
      --tpu-type=v5litepod-16 [--num-slices=2] [--docker-image=IMAGE | --base-docker-image=IMAGE] \
      --config=configs/hybrid.py --workdir=gs://BUCKET/runs/hybrid [--config.KEY=VALUE ...] [--dry-run]

all (the default) does, in order:
  create  `xpk workload create`: with --docker-image, that image runs the project command as is (it must
          hold the project, installed, with configs/ in its working directory); otherwise this checkout's
          --ref (packed with `git archive` into a fresh --script-dir) is added to --base-docker-image
          (default python:3.11) and each container installs it (`pip install -e . jax[tpu]`) before the
          command. TPU_NAME is set in the containers for jaxdistill.main's jax.distributed.initialize();
  wait    `xpk workload list --wait-for-job-completion` (its exit status: 0 when the workload completed);
  delete  `xpk workload delete` (also after a failed wait or Ctrl-C), unless --keep.
The containers' output goes to Cloud Logging (xpk prints the link). With --dry-run every command is
printed, one per line, and nothing runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile

import launchlib

ACTIONS = ("all", "create", "wait", "list", "delete")
DEFAULT_BASE_IMAGE = "python:3.11"  # xpk's own default (python:3.10) is older than the project allows


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch/gke_xpk.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Run one jaxdistill command on a GKE TPU cluster with xpk: create the workload, wait for it, "
                  "delete it.")
  parser.add_argument("action", nargs="?", default="all", choices=ACTIONS,
                      help="Which step(s) to run (default: all = create, wait, delete).")
  gke = parser.add_argument_group("the workload")
  gke.add_argument("--cluster", required=True, help="GKE cluster made by `xpk cluster create`.")
  gke.add_argument("--workload", help="Workload name (lowercase letters, digits, '-'; at most 40).")
  gke.add_argument("--project", help="GCP project (default: gcloud's configured project).")
  gke.add_argument("--zone", help="Cluster zone (default: gcloud's configured compute/zone).")
  gke.add_argument("--tpu-type", help="TPU type of each slice, e.g. v5litepod-16, v5p-32 (create).")
  gke.add_argument("--num-slices", type=launchlib.positive_int, default=1,
                   help="Number of slices (default: %(default)s).")
  image = gke.add_mutually_exclusive_group()
  image.add_argument("--docker-image", help="An image with the project installed, run as is.")
  image.add_argument("--base-docker-image",
                     help=f"Image this checkout is added to (default: {DEFAULT_BASE_IMAGE}).")
  gke.add_argument("--ref", default="HEAD",
                   help="Commit of this checkout added to the base image (default: %(default)s; commit first).")
  gke.add_argument("--max-restarts", type=int, help="Restarts of the workload on failure (xpk's default: 0); a "
                                                    "restarted run resumes from its last checkpoint.")
  gke.add_argument("--timeout", type=launchlib.positive_int,
                   help="Seconds to wait for completion (default: xpk's, one week).")
  launchlib.add_project_arguments(parser, workdir_help="gs://BUCKET/PATH: the run's workdir, shared by all hosts.")
  parser.add_argument("--keep", action="store_true", help="Do not delete the workload at the end of `all`.")
  parser.add_argument("--dry-run", action="store_true", help="Print every command; run nothing.")
  return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.action != "list":
    if not args.workload:
      parser.error(f"--workload is required to {args.action}")
    launchlib.check_resource_name(parser, "--workload", args.workload, max_len=40)
  if args.action in ("all", "create"):
    if not args.tpu_type:
      parser.error(f"--tpu-type is required to {args.action} (e.g. --tpu-type=v5litepod-16)")
    launchlib.check_tpu_type(parser, "--tpu-type", args.tpu_type)
    launchlib.check_project_arguments(parser, args, gcs_workdir=True)
    if args.max_restarts is not None and args.max_restarts < 0:
      parser.error(f"--max-restarts {args.max_restarts} must be >= 0")
    if not args.docker_image:
      launchlib.check_config_in_checkout(parser, args.config)
  elif args.overrides or args.passthrough:
    parser.error(f"{args.action} runs no project command: overrides and flags after -- belong to create or all")


def _scope(args) -> list[str]:
  return ([f"--project={args.project}"] if args.project else []) + ([f"--zone={args.zone}"] if args.zone else [])


def script_dir(args) -> str:
  return os.path.join(tempfile.gettempdir(), f"jaxdistill-xpk-{args.workload}")


def script_dir_argvs(args) -> list[list[str]]:
  """A fresh directory holding only the committed files at --ref (not .venv, runs/, caches)."""
  directory = script_dir(args)
  return [["rm", "-rf", directory, f"{directory}.tar"],
          ["git", "-C", launchlib.REPO, "archive", "--format=tar", f"--output={directory}.tar", args.ref],
          ["mkdir", "-p", directory],
          ["tar", "-xf", f"{directory}.tar", "-C", directory]]


def container_command(args) -> str:
  command = shlex.join(launchlib.project_argv(args))
  if args.docker_image:
    return command
  return f"python3 -m pip install --quiet -e . 'jax[tpu]' && {command}"


def create_argv(args) -> list[str]:
  if args.docker_image:
    image = [f"--docker-image={args.docker_image}"]
  else:
    image = [f"--base-docker-image={args.base_docker_image or DEFAULT_BASE_IMAGE}", f"--script-dir={script_dir(args)}"]
  restarts = [f"--max-restarts={args.max_restarts}"] if args.max_restarts is not None else []
  return ["xpk", "workload", "create", f"--cluster={args.cluster}", f"--workload={args.workload}",
          f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}", *_scope(args), *image, *restarts,
          "--env", f"TPU_NAME={args.workload}", f"--command={container_command(args)}"]


def wait_argv(args) -> list[str]:
  timeout = [f"--timeout={args.timeout}"] if args.timeout else []
  return ["xpk", "workload", "list", f"--cluster={args.cluster}", *_scope(args),
          f"--wait-for-job-completion={args.workload}", *timeout]


def list_argv(args) -> list[str]:
  return ["xpk", "workload", "list", f"--cluster={args.cluster}", *_scope(args)]


def delete_argv(args) -> list[str]:
  return ["xpk", "workload", "delete", f"--cluster={args.cluster}", *_scope(args), f"--workload={args.workload}",
          "--force"]


def create(runner: launchlib.Runner, args) -> None:
  if not args.docker_image:
    for argv in script_dir_argvs(args):
      runner.run(argv)
  runner.run(create_argv(args))


def launch(runner: launchlib.Runner, args) -> int:
  if not runner.dry_run:
    launchlib.require_tools(["xpk"] + (["git"] if args.action in ("all", "create") and not args.docker_image
                                       else []))
  if args.action == "create":
    create(runner, args)
    return 0
  if args.action == "wait":
    return runner.run(wait_argv(args), check=False)
  if args.action == "list":
    return runner.run(list_argv(args), check=False)
  if args.action == "delete":
    runner.run(delete_argv(args))
    return 0
  create(runner, args)
  try:
    return runner.run(wait_argv(args), check=False)
  finally:
    if args.keep:
      runner.note(f"kept {args.workload}; delete it with: python launch/gke_xpk.py delete --cluster={args.cluster} "
                  f"--workload={args.workload}")
    elif runner.run(delete_argv(args), check=False):
      runner.note(f"deleting {args.workload} failed: delete it yourself, {shlex.join(delete_argv(args))}")


def main(argv=None) -> int:
  parser = build_parser()
  args = launchlib.parse_args(parser, sys.argv[1:] if argv is None else argv)
  check_args(parser, args)
  return launchlib.main_guard(parser.prog, lambda: launch(launchlib.Runner(args.dry_run), args))


if __name__ == "__main__":
  sys.exit(main())

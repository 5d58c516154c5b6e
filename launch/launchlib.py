"""What the launchers (tpu_vm.py, gke_xpk.py, slurm.py) share: the project command they run, its
`--config.KEY=VALUE` overrides, the checks on their input, and how commands are shown or run.

Standalone on purpose (standard library only, no jaxdistill or jax import), so a launcher starts
instantly on a laptop that has nothing of the project installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Entry points that take --workdir; the others (teach, select) read their paths from the config.
WORKDIR_ENTRY_POINTS = ("jaxdistill.main", "jaxdistill.study")

OVERRIDE_PREFIX = "--config."

# TPU generations as gcloud and xpk name them; a type is GENERATION-N (N cores, or chips for v5e
# and later) or GENERATION-AxB[xC] (a topology, as xpk also accepts).
TPU_GENERATIONS = ("v2", "v3", "v4", "v5p", "v5litepod", "v6e", "tpu7x")
_TPU_TYPE = re.compile(r"(?P<generation>[a-z0-9]+)-(?P<size>[1-9][0-9]*|[1-9][0-9]*(x[1-9][0-9]*){1,2})")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# GCP resource names (queued resources, TPU nodes, xpk workloads): a DNS label.
_RESOURCE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then `gcloud auth login`",
    "xpk": "`pip install xpk` (it also needs gcloud, kubectl and docker; see https://github.com/AI-Hypercomputer/xpk)",
    "sbatch": "run this on a Slurm login node, where the Slurm client tools (sbatch, srun) are installed",
    "git": "install git (the local checkout is packed with `git archive`)",
}


class LaunchError(Exception):
  """Bad input or a missing tool: the message says which flag or tool, and what to do."""


class CommandFailed(Exception):
  def __init__(self, argv: Sequence[str], returncode: int):
    super().__init__(f"command failed with exit status {returncode}: {shlex.join(argv)}")
    self.returncode = returncode


# ---------------------------------------------------------------------------------------------
# Arguments


def add_project_arguments(parser: argparse.ArgumentParser, *, workdir_help: str) -> None:
  group = parser.add_argument_group("the project command")
  group.add_argument("--module", default="jaxdistill.main",
                     help="Entry point run as `python -m MODULE` (jaxdistill.main, jaxdistill.study, "
                          "jaxdistill.teach, jaxdistill.select, ...). Default: %(default)s.")
  group.add_argument("--config", help="Config file, relative to the repository root (configs/hybrid.py).")
  group.add_argument("--workdir", help=workdir_help)
  parser.epilog = ("Any --config.KEY=VALUE is passed to the project command unchanged, in order.\n"
                   "Flags after a lone `--` are appended to it too (e.g. -- --only=a,b for jaxdistill.study).")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
  """parser.parse_args, with `--config.KEY=VALUE` overrides and everything after `--` kept verbatim.

  The overrides are taken out before argparse sees them (argparse would treat a value that starts with
  `-` as a flag). Both land on the namespace: `overrides` and `passthrough`.
  """
  argv = list(argv)
  passthrough: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, passthrough = argv[:cut], argv[cut + 1:]
  overrides = [a for a in argv if a.startswith(OVERRIDE_PREFIX)]
  rest = [a for a in argv if not a.startswith(OVERRIDE_PREFIX)]
  for override in overrides:
    key, sep, _ = override.partition("=")
    if not sep or key == OVERRIDE_PREFIX:
      parser.error(f"override {override!r}: write it as one argument, --config.KEY=VALUE")
  if "--dry-run" in passthrough:  # a dry run must never become a real one by landing after `--`
    parser.error("--dry-run after `--` would go to the project command: put it before `--`")
  args = parser.parse_args(rest)
  args.overrides = overrides
  args.passthrough = passthrough
  return args


def check_project_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, *,
                            gcs_workdir: bool) -> None:
  """--config and --workdir given and well formed, --module a dotted name (parser.error otherwise)."""
  if not _MODULE.fullmatch(args.module):
    parser.error(f"--module {args.module!r} is not a Python module name (e.g. jaxdistill.main)")
  if not args.config:
    parser.error("--config is required (e.g. --config=configs/hybrid.py)")
  if not args.workdir:
    parser.error("--workdir is required" + (" (a gs://BUCKET/PATH)" if gcs_workdir else ""))
  if gcs_workdir and not re.fullmatch(r"gs://[^/\s]+(/.*)?", args.workdir):
    parser.error(f"--workdir {args.workdir!r} must be a gs://BUCKET/PATH: every host of the job reads and "
                 "writes it, and a path on one machine's disk is not shared")


def check_config_in_checkout(parser: argparse.ArgumentParser, config: str) -> None:
  """When the code comes from this checkout, a typo in --config fails here, not on the cluster."""
  path = config.split(":", 1)[0]  # config_flags' `file.py:argument` form
  if not os.path.isabs(path) and not os.path.isfile(os.path.join(REPO, path)):
    parser.error(f"--config {config!r}: no file {path} in this checkout ({REPO})")


def check_resource_name(parser: argparse.ArgumentParser, flag: str, name: str, max_len: int) -> None:
  if not _RESOURCE_NAME.fullmatch(name) or len(name) > max_len:
    parser.error(f"{flag} {name!r}: use lowercase letters, digits and '-', starting with a letter and not "
                 f"ending with '-', at most {max_len} characters")


def check_tpu_type(parser: argparse.ArgumentParser, flag: str, tpu_type: str) -> None:
  match = _TPU_TYPE.fullmatch(tpu_type)
  if not match or match["generation"] not in TPU_GENERATIONS:
    parser.error(f"{flag} {tpu_type!r} is not a TPU type: expected GENERATION-SIZE with GENERATION one of "
                 f"{', '.join(TPU_GENERATIONS)} and SIZE a count or a topology (e.g. v5litepod-16, v4-32, "
                 "v5p-2x2x2)")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return value


# ---------------------------------------------------------------------------------------------
# The project command


def project_argv(args: argparse.Namespace, python: str = "python3") -> list[str]:
  """`python -m MODULE --config=... [--workdir=...] OVERRIDES... PASSTHROUGH...` as an argv list."""
  argv = [python, "-m", args.module, f"--config={args.config}"]
  if args.module in WORKDIR_ENTRY_POINTS:
    argv.append(f"--workdir={args.workdir}")
  return argv + list(args.overrides) + list(args.passthrough)


# ---------------------------------------------------------------------------------------------
# Running (or, with --dry-run, printing) commands


def require_tools(tools: Sequence[str]) -> None:
  for tool in tools:
    if shutil.which(tool) is None:
      raise LaunchError(f"{tool} not found on PATH: {INSTALL_HINTS[tool]}")


class Runner:
  """Runs commands, echoing each to stderr; with dry_run, prints each to stdout and runs nothing."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def note(self, text: str) -> None:
    """A comment: in the dry-run listing (as a shell comment) or on stderr."""
    print(f"# {text}", file=sys.stdout if self.dry_run else sys.stderr, flush=True)

  def run(self, argv: Sequence[str], *, check: bool = True) -> int:
    line = shlex.join(argv)
    if self.dry_run:
      print(line, flush=True)
      return 0
    print(f"+ {line}", file=sys.stderr, flush=True)
    returncode = subprocess.run(list(argv), check=False).returncode
    if check and returncode != 0:
      raise CommandFailed(argv, returncode)
    return returncode

  def output(self, argv: Sequence[str]) -> str:
    """A command's stdout (not echoed: it is polled). Never called in a dry run."""
    assert not self.dry_run
    result = subprocess.run(list(argv), check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
      raise CommandFailed(argv, result.returncode)
    return result.stdout


def main_guard(prog: str, body) -> int:
  """Runs body(); a LaunchError or a failed command becomes one clear line on stderr and an exit status."""
  try:
    return body()
  except LaunchError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1
  except CommandFailed as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return e.returncode

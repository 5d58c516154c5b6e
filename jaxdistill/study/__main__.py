"""`python -m jaxdistill.study --config=configs/studies/<name>.py [--workdir=W] [--only=a,b] [--report-only]`.

Overrides go to the study config: `--config.seeds=0,1 --config.base.train.steps=100`.
"""

from __future__ import annotations

from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from jaxdistill import runtime
from jaxdistill.study import run as study_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "A study config (configs/studies/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root of the study's runs and report (default runs/studies/<name>).")
_ONLY = flags.DEFINE_list("only", [], "Train only these variants (the report covers every finished run).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Train nothing; report over the finished runs.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runtime.prepare_process()
  study = _CONFIG.value
  with runtime.refusals_as_exit():
    study_run.run(study, _WORKDIR.value or f"runs/studies/{study.name}", only=_ONLY.value,
                  report_only=_REPORT_ONLY.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)

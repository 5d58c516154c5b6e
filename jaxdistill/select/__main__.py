"""`python -m jaxdistill.select --config=configs/morsd.py`: MoRSD rationale selection (cache -> cache)."""

from absl import app
from ml_collections import config_flags

from jaxdistill import runtime
from jaxdistill.select.selection import run


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.prepare_process()
  with runtime.refusals_as_exit():
    run(_CONFIG.value)


if __name__ == "__main__":
  # Defined here, not at import: scripts that import this module define their own --config.
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/morsd.py", "MoRSD config file (config.select).")
  app.run(main)

"""Label-only training: the baseline every reasoning signal is compared against."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = "baseline"
  config.objective.name = "baseline"
  config.objective.alpha = 1.0
  return config

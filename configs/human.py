"""Multi-task: label + human explanations (e-SNLI / CoS-E style)."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = "human"
  config.objective.name = "human"
  return config

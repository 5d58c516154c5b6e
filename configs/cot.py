"""Distilling Step-by-Step: label + teacher chain-of-thought, alpha*label + (1-alpha)*rationale."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = "cot"
  config.objective.name = "cot"
  return config

"""Hybrid: human explanations and teacher rationales together, weighted per source."""

from configs import base


def get_config():
  config = base.get_config()
  config.name = "hybrid"
  config.objective.name = "hybrid"
  config.objective.human_weight = 0.5
  config.objective.teacher_weight = 0.5
  return config

"""Shared defaults for every setting: every key with its default and what it means lives in
jaxdistill/config.py `defaults()` (the one place; the tools check a config against it). Setting
files override only what differs.

Run any setting as
  python -m jaxdistill.main --config=configs/hybrid.py --workdir=runs/hybrid --config.train.steps=100
"""

import ml_collections

from jaxdistill import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  return config_lib.defaults()

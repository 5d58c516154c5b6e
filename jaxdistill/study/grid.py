"""A study's grid: variants x seeds as ordinary runs in WORKDIR/<variant>/seed-<k>.

A study config (configs/studies/*.py) holds
  base        a whole training config (what every run starts from)
  variants    name -> a partial config: the keys that variant changes (nested like the config)
  seeds       the seeds every variant runs with: seed k sets config.seed (initialisation, dropout)
              and config.data.shuffle_seed (the order of the training records); the data itself, and
              so the dev and test examples every comparison pairs, stay the same
  reference   the variant the others are compared with
  hypothesis_only  NLI: also train the base config on the hypothesis alone (variant "hypothesis-only",
              objective baseline), whose errors mark the hard subset (Gururangan et al. 2018);
              `hypothesis_only_seeds` (default: seeds) runs it with fewer seeds
A base config with a `select` section (configs/morsd.py) trains each run on its own MoRSD selection,
written to the run's `selection/` from scores computed once for the study (run.py); seed k is also
the seed of a random selection (select.seed).
A run is finished when its metrics.json and predictions.jsonl exist; an unfinished one resumes
from its checkpoints (train.run), so a killed study continues where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Iterable

import ml_collections
from etils import epath

from jaxdistill import train

HYPOTHESIS_ONLY = "hypothesis-only"


@dataclasses.dataclass(frozen=True)
class Run:
  variant: str
  seed: int
  workdir: str
  config: ml_collections.ConfigDict

  @property
  def finished(self) -> bool:
    return all((epath.Path(self.workdir) / f).exists() for f in ("metrics.json", train.PREDICTIONS))


def apply(config: ml_collections.ConfigDict, overrides: Any, where: str) -> None:
  """Sets every leaf of `overrides` (nested mappings) in `config`, refusing keys it does not have."""
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(f"{where}.{key}: the base config has no such key")
    if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(config[key], ml_collections.ConfigDict):
      apply(config[key], value, f"{where}.{key}")
    else:
      config[key] = value


def variants(study: ml_collections.ConfigDict) -> dict[str, Any]:
  """name -> overrides, with the hypothesis-only baseline when the study asks for it."""
  out = {name: study.variants[name] for name in study.variants}
  if study.get("hypothesis_only", False):
    out[HYPOTHESIS_ONLY] = {"objective": {"name": "baseline"}, "data": {"input_fields": "hypothesis"}}
  if study.reference not in out:
    raise ValueError(f"config.reference={study.reference!r} is not a variant ({sorted(out)})")
  return out


def seeds_of(study: ml_collections.ConfigDict, variant: str) -> tuple[int, ...]:
  if variant == HYPOTHESIS_ONLY and study.get("hypothesis_only_seeds") is not None:
    return tuple(study.hypothesis_only_seeds)
  return tuple(study.seeds)


def plan(study: ml_collections.ConfigDict, workdir: str, only: Iterable[str] = ()) -> list[Run]:
  """Every run of the study (or of the `only` variants), variant by variant, seeds in order."""
  table = variants(study)
  only = list(only)
  unknown = sorted(set(only) - set(table))
  if unknown:
    raise ValueError(f"--only: unknown variants {unknown}; known: {sorted(table)}")
  runs = []
  for name, overrides in table.items():
    if only and name not in only:
      continue
    for seed in seeds_of(study, name):
      config = copy.deepcopy(study.base)
      apply(config, overrides, f"config.variants.{name}")
      config.seed = int(seed)
      config.data.shuffle_seed = int(seed)
      workdir_of_run = os.path.join(workdir, name, f"seed-{int(seed)}")
      if "select" in config:  # its data.cache_dir is the same reference: training reads this selection
        config.select.update(out_dir=os.path.join(workdir_of_run, "selection"), seed=int(seed))
      config.name = f"{study.name}/{name}"
      runs.append(Run(name, int(seed), workdir_of_run, config))
  return runs

"""Checks a run's whole config once, at start, before any data is read or anything compiles.

A wrong value fails here in one line naming the key and what it accepts, instead of as a
`ZeroDivisionError` after compiling or a jax sharding error at the first step.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from jaxdistill.data import formats, sources
from jaxdistill.errors import ConfigError  # pylint: disable=unused-import  (raised here, re-exported)
from jaxdistill.objectives import semantic
from jaxdistill.partitioning import BATCH_AXES


CHOICES = {
    "data.source": tuple(sources.SOURCES),
    "data.on_error": sources.ON_ERROR,
    "data.packer": ("pool", "first_fit"),
    "objective.name": formats.OBJECTIVES,
    "objective.format": formats.FORMATS,
    "objective.mix": formats.MIXES,
    "objective.label_source": formats.LABEL_SOURCES,
    "objective.rationales": formats.TEACHER_SELECTIONS,
    "objective.rationale_loss": semantic.RATIONALE_LOSSES,
    "objective.semantic.distance": semantic.DISTANCES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.heads.pooling": ("first", "mean"),
    "train.optimizer": ("adamw", "adafactor"),
    "train.decay": ("cosine", "linear", "constant"),
}
AT_LEAST_ONE = ("train.steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.grad_accum_steps", "eval.every", "eval.batch_size",
                "eval.max_label_len", "data.max_source_len", "data.max_target_len")
FRACTIONS = ("objective.alpha", "objective.min_rationale_fraction")


def get(config: ml_collections.ConfigDict, key: str, default: Any = None) -> Any:
  """`config["a.b.c"]`, or `default` where a part of the path is missing."""
  node = config
  for part in key.split("."):
    if part not in node:
      return default
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value of `config` that cannot work."""
  for key, allowed in CHOICES.items():
    value = get(config, key)
    if value is not None and value not in allowed:
      raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(map(str, allowed))}")
  for key in AT_LEAST_ONE:
    value = get(config, key)
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ConfigError(f"config.{key}={value!r}: must be an integer >= 1")
  for key in FRACTIONS:
    value = get(config, key)
    if value is not None and not 0.0 <= float(value) <= 1.0:
      raise ConfigError(f"config.{key}={value!r}: must be between 0 and 1")
  if config.data.source in ("dss", "jsonl") and not (config.data.path or config.data.cache_dir):
    raise ConfigError(f"config.data.path is empty: data.source={config.data.source!r} reads a directory "
                      "(or set config.data.cache_dir to an imported cache)")


def validate_mesh(config: ml_collections.ConfigDict, mesh, process_count: int) -> None:
  """Batch sizes the mesh can split: each batch is sharded over the data-parallel mesh axes and
  read in equal slices by each host."""
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  described = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES)
  for key in ("train.batch_size", "eval.batch_size"):
    value = int(get(config, key))
    if value % ways:
      raise ConfigError(f"config.{key}={value} is not divisible by the mesh's data-parallel axes "
                        f"({described} = {ways} ways); use a multiple of {ways}")
  if config.train.batch_size % process_count:
    raise ConfigError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                      f"{process_count} hosts")

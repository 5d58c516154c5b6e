"""The model families: one table of family modules, and every lookup built from what they declare.

A new family is one module plus one line in FAMILIES. Each family module describes itself with
    KIND              "seq2seq" | "encoder" | "decoder": how a student of the family reads a batch
                      (see models/students.py)
    STUDENT_PRESETS   student preset name -> (the family's own PRESETS name, config overrides);
                      shapes only: vocab_size comes from the tokenizer
    MODEL_TYPES       the Hugging Face config.json `model_type` values it reads
    DROPOUT_FIELDS    its config's dropout fields (config.model.dropout_rate sets them all)
and implements the checkpoint contract of models/hf.py:
    get_config(preset, **overrides)  the family's config of a PRESETS shape
    config_from_hf(d, **kw)  HF config dict -> the family's config (kw overrides: dtype, ...)
    hf_config(config)        -> the config.json dict transformers loads (incl. "architectures")
    hf_mapping(model)        -> [hf.Tensor(hf_name, param, to_ours, to_hf), ...] for every param;
                             written per layer (`for i, layer in enumerate(model.layers)`), which a
                             scan_layers model's stack (models/stack.py) serves as per-layer slices
    HF_IGNORED               regexes of checkpoint names read and dropped (tied aliases, buffers)
    HF_PREFIXES (optional)   base-model prefixes of task checkpoints ("bert.", "deberta.")
    hf_aliases(d) (optional) adds the tied copies transformers' own state dict has, on export
    build(config, rngs)      -> a new model, whose class (defined in the family module) records
                             its config as `model.config`; its config has `remat` and `scan_layers`
                             fields (models/stack.py), which models/students.py sets from config.model

Family modules are imported on first use (importlib): most runs need one family, and family
modules import models/hf.py, which therefore never imports this registry.
"""

from __future__ import annotations

import functools
import importlib
import os
import types
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jaxdistill.models import hf

# family name -> its module.
FAMILIES = {
    "t5": "jaxdistill.models.t5",
    "bert": "jaxdistill.models.bert",
    "deberta": "jaxdistill.models.deberta",
    "llama": "jaxdistill.models.llama",
}


def family_module(family: str) -> types.ModuleType:
  """The module of a family by name ("t5", "bert", "deberta", "llama")."""
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
  return importlib.import_module(FAMILIES[family])


def kind(family: str) -> str:
  """"seq2seq" | "encoder" | "decoder"."""
  return family_module(family).KIND


@functools.cache
def model_types() -> dict[str, str]:
  """HF model_type -> family name."""
  out: dict[str, str] = {}
  for family in FAMILIES:
    for model_type in family_module(family).MODEL_TYPES:
      if model_type in out:
        raise ValueError(f"model_type {model_type!r} is claimed by both {out[model_type]} and {family}")
      out[model_type] = family
  return out


@functools.cache
def presets() -> dict[str, tuple[str, str, dict[str, Any]]]:
  """Student preset -> (family, the family's preset, config overrides), over every family."""
  out: dict[str, tuple[str, str, dict[str, Any]]] = {}
  for family in FAMILIES:
    for name, (family_preset, overrides) in family_module(family).STUDENT_PRESETS.items():
      if name in out:
        raise ValueError(f"student preset {name!r} is declared by both {out[name][0]} and {family}")
      out[name] = (family, family_preset, overrides)
  return out


def family_for(hf_config: Mapping[str, Any], where: str = "config.json") -> str:
  """The family reading a Hugging Face config (by its model_type); ValueError naming `where` if none."""
  model_type = hf_config.get("model_type")
  known = model_types()
  if model_type not in known:
    raise ValueError(f"{where}: model_type {model_type!r} is not supported; known: {sorted(known)}")
  return known[model_type]


def family_of(model: nnx.Module) -> str:
  """The family of a model instance: the one whose module defines the model's class."""
  module = type(model).__module__
  for family, path in FAMILIES.items():
    if path == module:
      return family
  raise ValueError(f"{type(model).__name__} ({module}) is not a model of a registered family")


def load(path: str, *, mesh: jax.sharding.Mesh | None = None, rules=None, **overrides: Any) -> nnx.Module:
  """The model of a Hugging Face directory, of the family its config.json names (see `hf.load`)."""
  hf_config = hf.read_config(path)
  family = family_for(hf_config, os.path.join(path, hf.CONFIG))
  return hf.load(path, family_module(family), mesh=mesh, rules=rules, **overrides)

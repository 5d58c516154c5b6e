"""The trace experiment as a config: `config.traces.variant` (none | correct | incorrect | mixed)
applied to a loaded Dataset, and the scorer the Evaluator calls on generated text.

The task's decomposer comes from the registry (decomposers.py), filled when sources.load_dataset
imported the task's source module: this module never names a data source.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Mapping, Sequence

from jaxdistill.data.examples import Example, Rationale
from jaxdistill.traces.corruption import corrupt
from jaxdistill.traces.decomposers import Decomposer, decomposer_for, trace_rationale
from jaxdistill.traces.scoring import Scorer
from jaxdistill.traces.steps import Step

VARIANTS = ("none", "correct", "incorrect", "mixed")
# What each variant trains: (objective.name, objective.format). `none` is answer-only SFT with the
# label record of the multitask view (a combined-format record without a rationale has no answer
# marker, so its generated answer could not be read back); the others train "<trace> Answer: <label>".
VARIANT_OBJECTIVES = {"none": ("baseline", "multitask"), "correct": ("cot", "rationale_answer"),
                      "incorrect": ("cot", "rationale_answer"), "mixed": ("cot", "rationale_answer")}
CORRUPTED_SUFFIX = "-corrupted"


def configure(config, variant: str):
  """Sets `config.traces.variant` and the objective it trains (VARIANT_OBJECTIVES); returns config."""
  if variant not in VARIANTS:
    raise ValueError(f"trace variant {variant!r}: expected one of {VARIANTS}")
  config.traces.variant = variant
  config.objective.name, config.objective.format = VARIANT_OBJECTIVES[variant]
  config.name = f"traces-{variant}"
  return config


def _check_config(config) -> None:
  t = config.traces
  if t.variant not in VARIANTS:
    raise ValueError(f"config.traces.variant={t.variant!r}: expected one of {VARIANTS}")
  if not 0.0 <= float(t.corrupt_rate) <= 1.0:
    raise ValueError(f"config.traces.corrupt_rate={t.corrupt_rate}: must be in [0, 1]")
  name, fmt = config.objective.name, config.objective.get("format", "multitask")
  if t.variant == "none":
    if name != "baseline":
      raise ValueError(f"config.traces.variant='none' trains on answers alone but config.objective.name={name!r}; "
                       f"use --config=configs/traces.py:none (objective baseline, format multitask)")
  elif name == "baseline" or fmt == "multitask":
    raise ValueError(f"config.traces.variant={t.variant!r} trains on traces: it needs objective cot with a combined "
                     f"format (rationale_answer or answer_rationale), got {name!r} / {fmt!r}; use "
                     f"--config=configs/traces.py:{t.variant}")


def training_rationales(decomposer: Decomposer, examples: Sequence[Example],
                        source: Mapping[str, Sequence[Rationale]], traces_config
                        ) -> tuple[dict[str, list[Rationale]], dict[str, Any]]:
  """The training traces of `traces_config.variant`, and counts of what was done.

  none: no traces. correct: each example's gold trace. incorrect: the gold trace, with
  probability corrupt_rate replaced by one whose `corrupt_step` is wrong. mixed: the gold trace
  and, with probability corrupt_rate, a corrupted one beside it (each record half the weight
  under objective.mix="both"; one of the two per epoch under "sample"). Draws depend only on
  (traces.seed, example id), so every run, host and resume corrupts the same examples the same way.
  """
  variant, which = traces_config.variant, str(traces_config.corrupt_step)
  rate, seed = float(traces_config.corrupt_rate), int(traces_config.get("seed", 0))
  if variant in ("incorrect", "mixed"):
    decomposer.step_names(which)  # fail early on a bad step name
  out: dict[str, list[Rationale]] = {}
  counts = collections.Counter()
  corrupted_id = decomposer.prompt_id + CORRUPTED_SUFFIX
  for ex in examples:
    gold = decomposer.gold(ex, source.get(ex.id, ()))
    if gold is None:
      counts["no_gold"] += 1
      continue
    if variant == "none":
      continue
    keep = [trace_rationale(ex, gold, decomposer.prompt_id)]
    rng = random.Random(f"{seed}:{ex.id}")
    if variant in ("incorrect", "mixed") and rng.random() < rate:
      wrong = corrupt(decomposer, ex, gold, which, rng)
      if wrong is None:
        counts["uncorruptible"] += 1
      else:
        counts["corrupted"] += 1
        bad = trace_rationale(ex, wrong, corrupted_id, sample_index=len(keep) if variant == "mixed" else 0)
        keep = keep + [bad] if variant == "mixed" else [bad]
    out[ex.id] = keep
    counts["traces"] += len(keep)
  return out, {"variant": variant, "corrupt_step": which, "corrupt_rate": rate,
               "train_examples": len(examples), **dict(sorted(counts.items()))}


def setup(config, dataset) -> tuple[Any, Callable | None]:
  """(dataset for training, trace scorer or None). Without `config.traces` the dataset is returned
  as it is and the scorer is None, so other settings are untouched.

  The training split's rationales become the variant's traces; dev and test keep (or get) their
  gold traces, which rationale perplexity reads, and the scorer checks generated text against
  gold steps computed before any corruption."""
  traces_config = config.get("traces") if hasattr(config, "get") else None
  if traces_config is None:
    return dataset, None
  _check_config(config)
  decomposer = decomposer_for(dataset.task)
  rationales = dict(dataset.rationales)
  train, info = training_rationales(decomposer, dataset.splits.get("train", []), dataset.rationales,
                                    traces_config)
  for ex in dataset.splits.get("train", []):
    rationales.pop(ex.id, None)
  rationales.update(train)
  golds: dict[str, list[Step] | None] = {}
  for split in ("dev", "test"):
    for ex in dataset.splits.get(split, []):
      golds[ex.id] = gold = decomposer.gold(ex, dataset.rationales.get(ex.id, ()))
      if gold is not None:
        rationales[ex.id] = [trace_rationale(ex, gold, decomposer.prompt_id)]
  return dataclasses.replace(dataset, rationales=rationales), Scorer(decomposer, golds, info)

"""What a workdir was made from: its fingerprint, checked on every (re)start.

`WORKDIR/fingerprint.json` records every config value that determines the run's results
(data source, path and task, model shape, tokenizer, objective, seeds, the step schedule, ...)
and a digest of the data's content (examples and rationales as loaded). A rerun computes the
same and refuses to start when a value differs, in one line naming the keys: resuming a demo
run on e-SNLI, or with another vocabulary, would otherwise finish "successfully" with numbers
that mean something else. Keys that only change how a run is carried out (log and checkpoint
periods, eval batch size, the mesh and sharding rules) may change freely; `train.allow_config_change=True`
accepts any change and records it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import ml_collections
from etils import epath

from jaxdistill import files
from jaxdistill.errors import ConfigError

FINGERPRINT = "fingerprint.json"
DATA_DIGEST = "data.content_sha256"

# Keys (or key prefixes ending in ".") that cannot change a run's parameters or metrics.
FREE_KEYS = (
    "name",
    "mesh.",  # a resharding restore continues the same run (numerics agree to float tolerance)
    "logical_axis_rules",  # likewise: where parameters and activations live, not what they are
    "model.remat",  # recomputation changes memory, not the parameters or the math
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpointing",
    "train.export_hf", "train.allow_config_change",
    "eval.batch_size", "eval.measure_decode", "eval.write_predictions", "eval.write_rationales",
    "data.on_error",  # what it changes shows in the data digest
)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _is_free(key: str) -> bool:
  return any(key.startswith(k) if k.endswith(".") else key == k for k in FREE_KEYS)


def data_digest(dataset) -> str:
  """sha256 of a Dataset's splits and rationales as loaded (order included: it sets the batches)."""
  digest = hashlib.sha256()
  for split in sorted(dataset.splits):
    for ex in dataset.splits[split]:
      digest.update(json.dumps([split, dataclasses.asdict(ex)], sort_keys=True, default=list).encode())
  for ex_id in sorted(dataset.rationales):
    for r in dataset.rationales[ex_id]:
      digest.update(json.dumps(dataclasses.asdict(r), sort_keys=True).encode())
  return digest.hexdigest()


def fingerprint(config: ml_collections.ConfigDict, dataset) -> dict[str, Any]:
  """{dotted key: value} of what determines the run's results, plus the data digest."""
  # Through JSON, so that values compare as they are stored (tuples become lists).
  values = json.loads(json.dumps(_flatten(config.copy_and_resolve_references().to_dict())))
  out = {k: v for k, v in sorted(values.items()) if not _is_free(k)}
  out[DATA_DIGEST] = data_digest(dataset)
  return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                ) -> list[str]:
  """"key (old -> new)" for every key whose value differs, was added or was removed. A key the old
  fingerprint lacks that is at its value in `defaults` (flattened config defaults) is no change: a
  later version added it, and at its default it does what the run did without it. Nor is a key now
  free that an older version recorded."""
  missing = object()
  out = []
  for key in sorted(k for k in set(old) | set(new) if not _is_free(k)):
    a, b = old.get(key, missing), new.get(key, missing)
    if a is missing and defaults is not None and key in defaults and b == defaults[key]:
      continue
    if a != b:
      show = lambda v: "unset" if v is missing else (f"{v[:12]}..." if key == DATA_DIGEST else repr(v))
      out.append(f"{key} ({show(a)} -> {show(b)})")
  return out


def flat_defaults(defaults: ml_collections.ConfigDict) -> dict[str, Any]:
  """`defaults` flattened as fingerprints store values, for `check(..., defaults=)`."""
  return json.loads(json.dumps(_flatten(defaults.copy_and_resolve_references().to_dict())))


def check(workdir: str, current: Mapping[str, Any], *, allow_change: bool, write: bool,
          defaults: Mapping[str, Any] | None = None) -> list[str]:
  """Compares `current` with WORKDIR's fingerprint: raises ConfigError when they differ (unless
  `allow_change`, which records the new one); records it in a new workdir. Returns the differences."""
  path = epath.Path(workdir) / FINGERPRINT
  if not path.exists():
    if write:
      files.atomic_write_text(path, json.dumps({"fingerprint": dict(current), "changes": []}, indent=2) + "\n")
    return []
  try:
    recorded = json.loads(path.read_text(encoding="utf-8"))
    old, changes = recorded["fingerprint"], list(recorded.get("changes", []))
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"{path}: unreadable workdir fingerprint ({e}); use a new --workdir") from None
  diff = differences(old, current, defaults)
  if diff and not allow_change:
    raise ConfigError(f"{workdir} was made with another config or data: {'; '.join(diff)}. Use a new --workdir, "
                      "or --config.train.allow_config_change=True to continue it with the new values")
  if diff and write:
    changes.append(diff)
    files.atomic_write_text(path, json.dumps({"fingerprint": dict(current), "changes": changes}, indent=2) + "\n")
  return diff

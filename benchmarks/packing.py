"""Packing efficiency of the training input pipeline on real data (cot objective).

    python benchmarks/packing.py [--tasks esnli,cqa] [--batch_size 64] [--seed 0]
                                 [--max_source_len N --max_target_len N]

For each task the records are exactly what `python -m jaxdistill.main --config=configs/cot.py
--config.data.source=dss --config.data.task=TASK --config.data.path=../shared/data/dss/TASK`
trains on (the train split: e-SNLI valid minus the last 1000 dev rows, CQA train; one label
record and one teacher-rationale record per example), tokenized with the BPE tokenizer trained
on that split (vocab 1024, as `model.tokenizer=bpe` does), and batched by
`pipeline.make_train_iterator` as `train.run` calls it. The figures are the fractions of
non-pad tokens (segment id != 0) in the encoder rows, the decoder rows, and both together,
over about one epoch of batches.

Lengths (printed): the token-length distribution of sources and targets decides them.
  padded rows (packing=False): p99 of each, rounded up to a multiple of 8;
  packed rows: Lt = round8(max(p99 target, 5 x mean target)) (a row holds ~5 records and
  any p99 target), Ls = round8(Lt x mean source / mean target) (the two budgets in the data's
  own source:target token ratio, so neither stream is systematically left empty).
Packers compared: grain's first fit (the previous default; bins = batch size, and 4x that) and
the pool packer (`packer="pool"`, the default; pool = max(64, batch size)).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from configs import cot  # noqa: E402
from jaxdistill import train as train_lib  # noqa: E402
from jaxdistill.data import formats, pipeline  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "dss")


def round8(x: float) -> int:
  return int(-(-int(np.ceil(x)) // 8) * 8)


def load(task: str, data_dir: str, seed: int):
  """(train examples, cot records, tokenizer) as a run reads them. Not `train.setup`: the packers are
  compared on the raw records, each in its own iterator, and no student is needed."""
  config = cot.get_config()
  config.data.source, config.data.task = "dss", task
  config.data.path = os.path.join(data_dir, task)
  config.data.seed = seed
  dataset, _ = train_lib.load_dataset(config)
  train = dataset.splits["train"]
  tok = train_lib.load_tokenizer(config, dataset, workdir="", save=False)
  records = formats.records_per_epoch(train, dataset.rationales, config.objective, dataset.labels,
                                      seed=config.data.seed)
  return len(train), records, tok


def describe(name: str, x: np.ndarray) -> str:
  p50, p90, p99 = np.percentile(x, [50, 90, 99])
  return f"{name:<22} mean {x.mean():6.1f}  p50 {p50:4.0f}  p90 {p90:4.0f}  p99 {p99:4.0f}  max {x.max():4d}"


def measure(records, tok, *, batch_size: int, ls: int, lt: int, packing: bool, packer: str = "pool",
            bins: int | None = None, seed: int = 0, epochs: float = 1.0):
  """Efficiency over ~`epochs` of batches, and the pipeline's time per batch."""
  src = sum(min(len(tok.encode(r.source)), ls) for r in records)
  rows_per_epoch = len(records) if not packing else src / ls
  n = max(4, int(np.ceil(epochs * rows_per_epoch / batch_size)))
  it = pipeline.make_train_iterator(records, tok, per_host_batch_size=batch_size, max_source_len=ls,
                                    max_target_len=lt, packing=packing, packer=packer, num_packing_bins=bins,
                                    seed=seed, prefetch=0)
  next(it)  # warm the tokenizer memo so the timing is packing, not first-time tokenization
  t0 = time.perf_counter()
  batches = pipeline.take(it, n)
  ms = (time.perf_counter() - t0) / n * 1e3
  return pipeline.packing_efficiency(batches), n, ms


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tasks", default="esnli,cqa")
  ap.add_argument("--data_dir", default=DATA)
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--max_source_len", type=int, default=0, help="packed row source budget (0: from the data)")
  ap.add_argument("--max_target_len", type=int, default=0, help="packed row target budget (0: from the data)")
  args = ap.parse_args(argv)
  b = args.batch_size
  table = []
  for task in args.tasks.split(","):
    t0 = time.perf_counter()
    n_examples, records, tok = load(task, args.data_dir, args.seed)
    s_len = np.array([len(tok.encode(r.source)) for r in records])
    t_len = np.array([len(tok.encode(r.target)) for r in records])
    label = np.array([r.task_id == formats.LABEL for r in records])
    print(f"\n== {task}: {n_examples} train examples -> {len(records)} cot records "
          f"({label.sum()} label, {(~label).sum()} rationale); {tok!r}; loaded in {time.perf_counter() - t0:.1f}s")
    print(describe("source (all)", s_len))
    print(describe("target (all)", t_len))
    print(describe("target (label rec.)", t_len[label]))
    print(describe("target (rationale rec.)", t_len[~label]))
    ratio = s_len.mean() / t_len.mean()
    pad_ls, pad_lt = round8(np.percentile(s_len, 99)), round8(np.percentile(t_len, 99))
    lt = args.max_target_len or round8(max(np.percentile(t_len, 99), 5 * t_len.mean()))
    ls = args.max_source_len or round8(lt * ratio)
    trunc = np.mean((s_len > ls) | (t_len > lt))
    print(f"source:target token ratio {ratio:.2f}; padded rows {pad_ls}/{pad_lt} (p99); packed rows "
          f"{ls}/{lt} (ratio {ls / lt:.2f}; {100 * trunc:.2f}% of records truncated)")
    runs = [
        ("no packing (pad)", dict(ls=pad_ls, lt=pad_lt, packing=False)),
        (f"first_fit, {b} bins (default)", dict(ls=ls, lt=lt, packing=True, packer="first_fit")),
        (f"first_fit, {4 * b} bins", dict(ls=ls, lt=lt, packing=True, packer="first_fit", bins=4 * b)),
        (f"pool, {max(64, b)} records", dict(ls=ls, lt=lt, packing=True, packer="pool")),
    ]
    print(f"{'pipeline':<36} {'lengths':>8} {'encoder':>8} {'decoder':>8} {'combined':>8} "
          f"{'rec/row':>7} {'batches':>7} {'ms/batch':>8}")
    for name, kw in runs:
      eff, n, ms = measure(records, tok, batch_size=b, seed=args.seed, **kw)
      lengths = f"{kw['ls']}/{kw['lt']}"
      print(f"{name:<36} {lengths:>8} {eff['encoder']:8.3f} {eff['decoder']:8.3f} {eff['combined']:8.3f} "
            f"{eff['records_per_row']:7.2f} {n:7d} {ms:8.1f}", flush=True)
      table.append((task, name, lengths, eff, ms))
  print("\n| task | pipeline | Ls/Lt | encoder | decoder | combined | records/row | ms/batch |")
  print("|---|---|---|---|---|---|---|---|")
  for task, name, lengths, eff, ms in table:
    print(f"| {task} | {name} | {lengths} | {eff['encoder']:.3f} | {eff['decoder']:.3f} | "
          f"{eff['combined']:.3f} | {eff['records_per_row']:.2f} | {ms:.1f} |")


if __name__ == "__main__":
  main()

"""Training throughput: jaxdistill's multi-task train step vs the PyTorch reference recipe.

    python benchmarks/train_throughput.py [--preset t5-small] [--batch_size 8] [--steps 5] [--windows 3]

jaxdistill side: the real thing, built as a run builds it. `configs/cot.py` (Distilling Step-by-Step,
alpha=0.5) on real e-SNLI (`data.source=dss`: the DSS release's `valid` split minus its last 1,000 dev
examples = 8,842 training examples + PaLM-540B rationales), `train.setup(config, tmp_workdir)` on a
1-device mesh: the trained BPE tokenizer, the row shape, the training iterator (Grain, packing on,
prefetch thread) and the student, then `train.make_train_step`. `--batch_size` is the config's
`train.batch_size`: packed *rows*.

Reference side: the Distilling Step-by-Step recipe (google-research/distilling-step-by-step,
`TaskPrefixTrainer`) written with transformers' PyTorch `T5ForConditionalGeneration` of the same shape
(config fields copied from the jaxdistill T5Config, untied LM head, same initial weights), the same
tokenizer and the same token ids (`pipeline.tokenize_record`: same truncation, same EOS). Per step: B
examples -> `DataCollatorForSeq2Seq` (pad to the longest in the batch, labels padded with -100) twice
("[label] ..." -> label, "[rationale] ..." -> rationale), two forward passes,
loss = alpha*l1 + (1-alpha)*l2, one backward, clip_grad_norm_(1.0), AdamW (fused: the HF Trainer default
`adamw_torch_fused`). Texts are tokenized up front, as the reference does with `datasets.map`.
`torch.set_num_threads(os.cpu_count())`.

Equal work: B (reference examples per step) is set to the mean number of *examples* a jaxdistill packed
batch holds (label segments, task id LABEL, counted over 200 batches of a separate iterator), unless
`--ref_batch_size` is given. Throughput is reported in examples/s (an example = one label + one rationale
record; jaxdistill: label segments consumed) and useful tokens/s (non-pad source + target tokens).

Timing: one process; after compilation (timed and printed, excluded) and warm-up steps, timed windows of
`--steps` steps alternate between the two sides (the side that goes first alternates too), so machine
load drifts hit both. No host sync inside a jaxdistill window: only the window's last state is
`jax.block_until_ready`-ed. The ratio is jaxdistill / reference of the summed examples / summed seconds.

Memory: `jax.devices()[0].memory_stats()` is None on CPU, so each side runs once more in its own
subprocess (`--memory`, default on): RSS once the framework is imported (before the data, the tokenizer
and the model: `train.setup` builds them together), peak RSS including compilation/warm-up, then the
peak is reset (`/proc/self/clear_refs` = 5) and the peak RSS of `--memory_steps` training steps is read
from VmHWM. Reported: steady-state training peak minus that RSS (data and tokenizer, a few tens of MB;
parameters, optimizer state, activations, workspaces, allocator slack).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "dss", "esnli")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="t5-small", help="t5-tiny | t5-mini | t5-small | t5-base")
  p.add_argument("--batch_size", type=int, default=8, help="jaxdistill packed rows per step (train.batch_size)")
  p.add_argument("--ref_batch_size", type=int, default=0,
                 help="reference examples per step (0: the mean examples per jaxdistill batch)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per window per side")
  p.add_argument("--windows", type=int, default=3, help="timed windows per side (alternating)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per side after compilation")
  p.add_argument("--max_extra_windows", type=int, default=3,
                 help="extra window pairs allowed when a pair is contended by other processes")
  p.add_argument("--max_foreign_cpu", type=float, default=0.10,
                 help="a window pair counts only if other processes used at most this share of the CPUs")
  p.add_argument("--max_wait", type=float, default=30.0,
                 help="before each window pair, wait up to this many seconds for the CPUs to be free of other work")
  p.add_argument("--time_budget", type=float, default=200.0,
                 help="seconds of timed windows after which no extra window pairs are started")
  p.add_argument("--ref_flush_denormal", action=argparse.BooleanOptionalAction, default=True,
                 help="torch.set_flush_denormal(True) for the reference (XLA:CPU flushes by default)")
  p.add_argument("--row_source_len", type=int, default=0, help="packed row length (0: sized to the data)")
  p.add_argument("--row_target_len", type=int, default=0, help="packed row length (0: sized to the data)")
  p.add_argument("--packer", default="", help="first_fit | pool ('': configs/base.py)")
  p.add_argument("--dtype", default="float32", help="jaxdistill activation dtype (config model.dtype)")
  p.add_argument("--data", default=DEFAULT_DATA, help="DSS e-SNLI directory")
  p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                 help="measure peak RSS per side in a subprocess")
  p.add_argument("--memory_steps", type=int, default=3)
  p.add_argument("--skip_reference", action="store_true", help="jaxdistill side only")
  p.add_argument("--json", default="", help="also write the results here")
  p.add_argument("--_probe", default="", help=argparse.SUPPRESS)  # jax | torch (memory subprocess)
  p.add_argument("--_workdir", default="", help=argparse.SUPPRESS)  # the main run's (its trained tokenizer)
  return p.parse_args(argv)


# --------------------------------------------------------------------------- shared set-up


def make_config(args):
  from configs import cot
  config = cot.get_config()
  config.data.source, config.data.task, config.data.path = "dss", "esnli", args.data
  config.data.max_eval_examples = 1  # setup() batches dev/test for evaluation; nothing here evaluates
  config.model.preset = args.preset
  config.model.dtype = args.dtype
  config.train.batch_size = args.batch_size
  config.data.row_source_len = args.row_source_len
  config.data.row_target_len = args.row_target_len
  if args.packer:
    config.data.packer = args.packer
  args.packer = config.data.packer
  config.mesh.data = 1  # one device
  return config


def reference_data(job) -> tuple:
  """(examples, rationales by id, labels, tokenizer): the training data and tokenizer of the jaxdistill
  side's job, which the reference trains on too."""
  return job.dataset.splits["train"], job.dataset.rationales, job.dataset.labels, job.tokenizer


def load_data(config, workdir: str) -> tuple:
  """The same as `reference_data`, read as train.setup reads it, without building a student (the
  reference's memory probe)."""
  from jaxdistill import train
  dataset, _ = train.load_dataset(config)
  tok = train.load_tokenizer(config, dataset, workdir, save=False)  # the main run's, trained in `workdir`
  return dataset.splits["train"], dataset.rationales, dataset.labels, tok


def batch_counts(batch) -> tuple[int, int, int]:
  """(label segments, rationale segments, useful tokens) of a numpy Batch (packed or padded)."""
  from jaxdistill.data.formats import LABEL, RATIONALE
  dec_seg = batch["decoder_segment_ids"]
  starts = (batch["decoder_positions"] == 0) & (dec_seg > 0)
  task = batch["decoder_task_ids"]
  tokens = int(np.count_nonzero(batch["encoder_segment_ids"])) + int(np.count_nonzero(dec_seg))
  return (int(np.count_nonzero(starts & (task == LABEL))), int(np.count_nonzero(starts & (task == RATIONALE))),
          tokens)


def rss_kb(field: str = "VmRSS") -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return -1


def reset_peak_rss() -> bool:
  """Returns freed heap to the OS (malloc_trim), then resets VmHWM to the current RSS."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


class CpuMonitor:
  """Machine-wide CPU time used by *other* processes between two snapshots (/proc/stat minus this
  process's utime+stime). This machine is shared: a window during which another process keeps a core
  busy is not a measurement of either side (PyTorch's OpenMP threads slow down ~10x when a core is
  taken, XLA's pool ~2x), so windows are tagged with it and contended pairs are left out."""

  @staticmethod
  def snapshot() -> tuple[int, int, int]:
    try:
      with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
      with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      return sum(vals), vals[3] + vals[4], int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
      return 0, 0, 0

  @staticmethod
  def foreign(a, b) -> float:
    total = b[0] - a[0]
    busy = total - (b[1] - a[1])
    return max(busy - (b[2] - a[2]), 0) / total if total > 0 else 0.0


def wait_for_quiet(max_foreign: float, max_wait: float) -> float:
  """Sleeps (0.5 s probes) until other processes use at most `max_foreign` of the CPUs, or max_wait."""
  t0 = time.perf_counter()
  while True:
    snap = CpuMonitor.snapshot()
    time.sleep(0.5)
    if CpuMonitor.foreign(snap, CpuMonitor.snapshot()) <= max_foreign or time.perf_counter() - t0 > max_wait:
      return time.perf_counter() - t0


def timed(fn):
  """Wraps a side's window: adds seconds and the foreign CPU share to fn's result dict."""
  def wrapper(*args, **kwargs):
    snap = CpuMonitor.snapshot()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    out["seconds"] = time.perf_counter() - t0
    out["foreign_cpu"] = CpuMonitor.foreign(snap, CpuMonitor.snapshot())
    return out
  return wrapper


# --------------------------------------------------------------------------- jaxdistill side


class JaxSide:
  name = "jaxdistill"

  def __init__(self, config, workdir: str):
    import jax
    from jaxdistill import partitioning, train
    self.jax, self.partitioning = jax, partitioning
    self.config = config
    self.job = train.setup(config, workdir)  # data, tokenizer, rows, iterator, student: as a run builds them
    self.mesh, self.student, self.state, self.iter = self.job.mesh, self.job.student, self.job.state, self.job.train_iter
    self.n_params = self.job.n_params
    self.train_step = train.make_train_step(self.student, config, self.mesh)
    self.first_batch = next(self.iter)  # compile() runs it; its shape is the row shape setup chose
    self.rows = (self.first_batch["encoder_input_ids"].shape[1], self.first_batch["decoder_input_ids"].shape[1])

  def make_iterator(self):
    """A second iterator of the same stream, as setup builds it."""
    from jaxdistill import train
    return train.make_train_iterator(self.config, self.job.dataset, self.job.tokenizer, self.student, None)

  def examples_per_batch(self, n_batches: int = 200) -> dict:
    """Mean label/rationale segments and tokens per batch, from a separate iterator (same stream)."""
    from jaxdistill.data import pipeline
    it = self.make_iterator()
    batches = pipeline.take(it, n_batches)
    counts = np.array([batch_counts(b) for b in batches], np.float64)
    eff = pipeline.packing_efficiency(batches)
    it.close()
    return dict(label=counts[:, 0].mean(), rationale=counts[:, 1].mean(), tokens=counts[:, 2].mean(), **eff)

  def compile(self) -> float:
    batch = self.partitioning.global_batch(self.first_batch, self.mesh)
    t0 = time.perf_counter()
    self.compiled = self.train_step.lower(self.state, batch).compile()
    seconds = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    try:
      m = self.compiled.memory_analysis()
      self.xla_memory = dict(arguments_mb=m.argument_size_in_bytes / 2**20, outputs_mb=m.output_size_in_bytes / 2**20,
                             aliased_mb=m.alias_size_in_bytes / 2**20, temp_mb=m.temp_size_in_bytes / 2**20)
    except Exception:  # noqa: BLE001 (not every backend implements it)
      self.xla_memory = None
    # Steps call the AOT executable: `jit(...).lower().compile()` does not fill jit's own cache.
    self.state, _ = self.compiled(self.state, batch)
    self.jax.block_until_ready(self.state)
    return seconds

  @timed
  def run(self, steps: int) -> dict:
    examples = rationales = tokens = 0
    for _ in range(steps):
      local = next(self.iter)
      n_label, n_rationale, n_tokens = batch_counts(local)
      examples += n_label
      rationales += n_rationale
      tokens += n_tokens
      self.state, _ = self.compiled(self.state, self.partitioning.global_batch(local, self.mesh))
    self.jax.block_until_ready(self.state)
    return dict(examples=examples, rationales=rationales, tokens=tokens, steps=steps)

  def hf_state_dict(self):
    from jaxdistill.models import hf as hf_io
    return hf_io.state_dict(self.student.model(self.state))


# --------------------------------------------------------------------------- reference side


def hf_config(model_config):
  """transformers.T5Config with the jaxdistill T5Config's shape (untied head: v1.1 / jaxdistill)."""
  import transformers
  c = model_config
  return transformers.T5Config(
      vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_heads=c.num_heads,
      num_layers=c.num_encoder_layers, num_decoder_layers=c.num_decoder_layers,
      relative_attention_num_buckets=c.relative_attention_num_buckets,
      relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout_rate,
      layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=c.feed_forward_proj,
      tie_word_embeddings=c.tie_word_embeddings, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


class TorchSide:
  name = "reference"

  def __init__(self, config, examples, by_id, labels, tok, batch_size: int, state_dict=None, seed: int = 0,
               flush_denormal: bool = True):
    import torch
    import transformers
    from jaxdistill import train
    from jaxdistill.data import formats, pipeline
    from jaxdistill.models import t5
    self.torch = torch
    torch.set_num_threads(os.cpu_count() or 1)
    if flush_denormal:  # XLA:CPU flushes denormals by default (xla_cpu_ftz); so does the reference here
      torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model_config = t5.get_config(config.model.preset, vocab_size=tok.vocab_size,
                                 dropout_rate=float(config.model.dropout_rate))
    model = transformers.T5ForConditionalGeneration(hf_config(model_config))
    if not model_config.tie_word_embeddings:
      # transformers v5 ties lm_head to shared even for v1.1 configs: untie, like jaxdistill's student.
      model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    if state_dict is not None:
      missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                                                  strict=False)
      if [m for m in missing if "embed_tokens" not in m] or unexpected:
        raise ValueError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.train()
    self.model = model
    self.n_params = sum(p.numel() for p in model.parameters())
    self.alpha = float(config.objective.alpha)
    try:
      self.opt = torch.optim.AdamW(model.parameters(), lr=float(config.train.learning_rate), betas=(0.9, 0.98),
                                   weight_decay=float(config.train.weight_decay), fused=True)
      self.optimizer_kind = "AdamW(fused=True)"
    except (RuntimeError, TypeError, ValueError):
      self.opt = torch.optim.AdamW(model.parameters(), lr=float(config.train.learning_rate), betas=(0.9, 0.98),
                                   weight_decay=float(config.train.weight_decay))
      self.optimizer_kind = "AdamW"
    # jaxdistill's warmup + cosine schedule (as multipliers of the peak), so both sides train alike.
    schedule = train.make_schedule(config.train)
    peak = float(config.train.learning_rate)
    factors = [float(v) / peak for v in np.asarray(schedule(np.arange(int(config.train.steps) + 1)))]
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda i: factors[min(i, len(factors) - 1)])
    self.clip = float(config.train.grad_clip_norm)
    self.collator = transformers.DataCollatorForSeq2Seq(tok.hf, model=model, label_pad_token_id=-100,
                                                        padding="longest", return_tensors="pt")
    # Tokenized up front (the reference's datasets.map), same ids as the jaxdistill pipeline.
    ls, lt = config.data.max_source_len, config.data.max_target_len
    pairs = []
    for ex in examples:
      recs = formats.records_for_example(ex, by_id.get(ex.id, ()), config.objective, labels)
      label = next(r for r in recs if r.task_id == formats.LABEL)
      rationale = next((r for r in recs if r.task_id == formats.RATIONALE), None)
      if rationale is None:
        continue
      feats = [pipeline.tokenize_record(r, tok, ls, lt) for r in (label, rationale)]
      pairs.append([{"input_ids": f["encoder_input_ids"].tolist(), "labels": f["decoder_target_ids"].tolist()}
                    for f in feats])
    self.pairs = pairs
    self.batch_size = batch_size
    self.rng = np.random.default_rng(seed)
    self.order, self.pos = self.rng.permutation(len(pairs)), 0

  def _indices(self):
    if self.pos + self.batch_size > len(self.order):
      self.order, self.pos = self.rng.permutation(len(self.pairs)), 0
    idx = self.order[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return idx

  def step(self) -> int:
    idx = self._indices()
    label_batch = self.collator([self.pairs[i][0] for i in idx])
    rationale_batch = self.collator([self.pairs[i][1] for i in idx])
    l1 = self.model(**label_batch).loss
    l2 = self.model(**rationale_batch).loss
    loss = self.alpha * l1 + (1.0 - self.alpha) * l2
    loss.backward()
    if self.clip > 0:
      self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.sched.step()
    self.opt.zero_grad(set_to_none=True)
    tokens = 0
    for b in (label_batch, rationale_batch):
      tokens += int(b["attention_mask"].sum()) + int((b["labels"] != -100).sum())
    self.last_loss = loss
    return tokens

  def compile(self) -> float:
    return 0.0

  @timed
  def run(self, steps: int) -> dict:
    tokens = 0
    for _ in range(steps):
      tokens += self.step()
    self.last_loss.detach().item()
    n = steps * self.batch_size
    return dict(examples=n, rationales=n, tokens=tokens, steps=steps)


# --------------------------------------------------------------------------- memory probe (subprocess)


def probe(args) -> dict:
  config = make_config(args)
  import jax  # noqa: F401  (imported before the baseline: framework, not training memory)
  from jaxdistill import train  # noqa: F401  (clu, TensorFlow; the reference reads its data through it)
  if args._probe != "jax":
    import torch  # noqa: F401
    import transformers  # noqa: F401
  base = rss_kb()
  if args._probe == "jax":
    side = JaxSide(config, args._workdir)
    side.compile()
  else:
    side = TorchSide(config, *load_data(config, args._workdir), batch_size=args.ref_batch_size)
  side.run(args.warmup)
  peak_with_compile = rss_kb("VmHWM")
  reset_ok = reset_peak_rss()
  side.run(args.memory_steps)
  return dict(side=args._probe, base_rss_mb=base / 1024, peak_rss_incl_compile_mb=peak_with_compile / 1024,
              peak_rss_train_mb=rss_kb("VmHWM") / 1024, peak_reset=reset_ok,
              train_delta_mb=(rss_kb("VmHWM") - base) / 1024)


def run_probe(args, side: str, workdir: str, ref_batch_size: int) -> dict | None:
  cmd = [sys.executable, os.path.abspath(__file__), "--_probe", side, "--_workdir", workdir,
         "--preset", args.preset, "--batch_size", str(args.batch_size), "--ref_batch_size", str(ref_batch_size),
         "--row_source_len", str(args.row_source_len), "--row_target_len", str(args.row_target_len),
         "--dtype", args.dtype, "--data", args.data, "--warmup", str(args.warmup), "--packer", args.packer,
         "--memory_steps", str(args.memory_steps)]
  out = subprocess.run(cmd, capture_output=True, text=True)
  for line in out.stdout.splitlines():
    if line.startswith("PROBE_RESULT "):
      return json.loads(line[len("PROBE_RESULT "):])
  print(f"memory probe {side} failed (rc={out.returncode}):\n{out.stderr[-2000:]}", file=sys.stderr)
  return None


# --------------------------------------------------------------------------- main


def summarize(windows: list[dict]) -> dict:
  seconds = sum(w["seconds"] for w in windows)
  examples = sum(w["examples"] for w in windows)
  steps = sum(w["steps"] for w in windows)
  return dict(seconds=seconds, examples=examples, steps=steps, examples_per_s=examples / seconds,
              tokens_per_s=sum(w["tokens"] for w in windows) / seconds, step_s=seconds / steps,
              window_examples_per_s=[w["examples"] / w["seconds"] for w in windows])


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def main(argv=None):
  args = parse_args(argv)
  if args._probe:
    print("PROBE_RESULT " + json.dumps(probe(args)), flush=True)
    return
  import jax
  import torch
  import transformers

  config = make_config(args)
  t0 = time.perf_counter()
  workdir = tempfile.mkdtemp(prefix="jaxdistill_bench_")
  jx = JaxSide(config, workdir)
  examples, by_id, labels, tok = reference_data(jx.job)
  print(f"data: e-SNLI train split {len(examples)} examples, {sum(len(v) for v in by_id.values())} PaLM rationales; "
        f"tokenizer {tok} (train.setup incl. the student: {time.perf_counter() - t0:.1f}s)", flush=True)
  print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}), jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average {os.getloadavg()[0]:.2f}", flush=True)

  per_batch = jx.examples_per_batch()
  ref_b = args.ref_batch_size or max(1, int(round(per_batch["label"])))
  print(f"jaxdistill: {args.preset} {jx.n_params / 1e6:.2f}M params, {args.dtype}, batch {args.batch_size} packed rows "
        f"[{jx.rows[0]}|{jx.rows[1]}] {args.packer} = {per_batch['label']:.2f} examples "
        f"({per_batch['label']:.2f} label + {per_batch['rationale']:.2f} rationale records) per step; "
        f"packing: encoder {per_batch['encoder']:.1%} / decoder {per_batch['decoder']:.1%} non-pad, "
        f"{per_batch['records_per_row']:.2f} records/row", flush=True)
  sides = [jx]
  if not args.skip_reference:
    ref = TorchSide(config, examples, by_id, labels, tok, batch_size=ref_b, state_dict=jx.hf_state_dict(),
                    seed=config.data.seed, flush_denormal=args.ref_flush_denormal)
    print(f"reference: HF T5ForConditionalGeneration {ref.n_params / 1e6:.2f}M params, float32, {ref_b} examples "
          f"per step (2 passes padded to the longest), {ref.optimizer_kind}", flush=True)
    sides.append(ref)

  compile_s = jx.compile()
  print(f"jaxdistill compile: {compile_s:.1f}s (excluded); XLA cost analysis {jx.xla_flops / 1e9:.1f} GFLOP/step",
        flush=True)
  if jx.xla_memory:
    m = jx.xla_memory
    print(f"jaxdistill XLA memory_analysis: arguments {m['arguments_mb']:.0f} MB (state + batch; "
          f"{m['aliased_mb']:.0f} MB donated to the outputs), temporaries {m['temp_mb']:.0f} MB", flush=True)
  for side in sides:
    side.run(args.warmup)

  # Alternating windows; a pair counts when neither window shared the machine with another process.
  results = {side.name: [] for side in sides}
  clean_pairs: list[int] = []
  start = time.perf_counter()
  w = 0
  waited = 0.0
  while w < args.windows + args.max_extra_windows:
    waited += wait_for_quiet(args.max_foreign_cpu, args.max_wait)
    order = sides if w % 2 == 0 else sides[::-1]
    for side in order:
      r = side.run(args.steps)
      results[side.name].append(r)
      print(f"  window {w} {side.name:10s}: {r['steps']} steps {r['seconds']:6.2f}s  "
            f"{r['examples'] / r['seconds']:6.2f} examples/s  {r['tokens'] / r['seconds']:8.0f} tokens/s  "
            f"(other processes: {r['foreign_cpu']:.0%} of the CPUs)", flush=True)
    if all(results[side.name][w]["foreign_cpu"] <= args.max_foreign_cpu for side in sides):
      clean_pairs.append(w)
    w += 1
    if len(clean_pairs) >= args.windows:
      break
    if w >= args.windows and time.perf_counter() - start > args.time_budget:
      break
  used = clean_pairs or list(range(w))
  if not clean_pairs:
    print(f"WARNING: every window shared the CPUs with other processes (> {args.max_foreign_cpu:.0%}); "
          "the figures below are not a clean measurement", flush=True)
  summary = {name: summarize([ws[i] for i in used]) for name, ws in results.items()}

  memory = {}
  if args.memory:
    memory["jaxdistill"] = run_probe(args, "jax", workdir, ref_b)
    if not args.skip_reference:
      memory["reference"] = run_probe(args, "torch", workdir, ref_b)

  print()
  print(f"preset {args.preset}, jaxdistill batch {args.batch_size} rows [{jx.rows[0]}|{jx.rows[1]}] "
        f"{args.packer}, "
        f"reference batch {ref_b} examples; {len(used)} window pairs of {args.steps} steps used "
        f"({'clean' if clean_pairs else 'CONTENDED'}: {used} of {w}; {waited:.0f}s spent waiting for other "
        f"processes to leave the CPUs); load average {os.getloadavg()[0]:.2f}")
  print(f"{'side':12s} {'step s':>7s} {'examples/s':>11s} {'tokens/s':>9s}  peak RSS during training - RSS before "
        f"the data and model (absolute; incl. compile)")
  for name, s in summary.items():
    m = memory.get(name)
    mem = (f"{m['train_delta_mb']:.0f} MB ({m['peak_rss_train_mb']:.0f} MB; {m['peak_rss_incl_compile_mb']:.0f} MB)"
           if m else "n/a")
    print(f"{name:12s} {s['step_s']:7.3f} {s['examples_per_s']:11.2f} {s['tokens_per_s']:9.0f}  {mem}")
  if "reference" in summary:
    ratio = summary["jaxdistill"]["examples_per_s"] / summary["reference"]["examples_per_s"]
    pair = [a / b for a, b in zip(summary["jaxdistill"]["window_examples_per_s"],
                                  summary["reference"]["window_examples_per_s"])]
    tok_ratio = summary["jaxdistill"]["tokens_per_s"] / summary["reference"]["tokens_per_s"]
    print(f"ratio jaxdistill/reference: examples/s {ratio:.2f}x (per window pair {', '.join(f'{x:.2f}' for x in pair)}), "
          f"useful tokens/s {tok_ratio:.2f}x")
    summary["ratio_examples_per_s"] = ratio
    summary["ratio_tokens_per_s"] = tok_ratio
  summary.update(xla_memory=jx.xla_memory, compile_s=compile_s, xla_gflop_per_step=jx.xla_flops / 1e9,
                 ref_batch_size=ref_b, per_batch=per_batch, memory=memory, windows=results, clean_pairs=clean_pairs,
                 args=vars(args))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=2, default=float)


if __name__ == "__main__":
  main()

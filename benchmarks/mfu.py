"""Model FLOPs utilisation of jaxdistill's train step, and where the step's time goes.

    python benchmarks/mfu.py [--configs t5-small:8,t5-mini:16] [--steps 5] [--windows 2] [--profile]

For each `preset:batch_size` (packed rows, cot objective on real e-SNLI, built by `train.setup` in a
temporary workdir, the same set-up as benchmarks/train_throughput.py):

* FLOPs per step, two ways:
  - analytical (reported): every matmul of the T5 forward on the padded batch shape
    (projections, gated FFN, LM head, attention scores and values; embedding look-ups and
    elementwise work count 0), times 3 for forward + backward. "useful" scales the per-token
    matmul part by the non-pad token fraction (attention left out) to show what padding costs.
  - `jit(...).lower(...).compile().cost_analysis()["flops"]`: XLA's count of the optimised HLO
    (also counts elementwise/softmax/optimizer flops, may count fused or rematerialised work
    differently); printed next to it.
* Machine peak, measured in the same run: jitted float32 `jnp.dot` of square matrices
  (1024, 2048, 4096), best of several repetitions, 2*n^3 FLOPs; the peak is the best size, measured
  before and after the train steps (the higher one is used, so MFU errs low).
* MFU = analytical FLOPs * steps / seconds of timed windows (data pipeline included, one
  `block_until_ready` per window) / peak.
* Profile (`--profile`, default on): (a) per-step breakdown with a host sync per step: waiting
  for the next batch (Grain), host->device put, step; plus the pipeline alone (no prefetch thread);
  (b) a `jax.profiler` trace of a few steps on a fixed batch (written under --trace_dir, viewable
  with TensorBoard/XProf), parsed here: XLA thunk time summed per category (matmul fusions,
  gather/scatter, reductions/softmax, copies/transposes, elementwise) and the top ops;
  (c) XLA cost analysis (flops, bytes accessed, arithmetic intensity).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402  (sets up sys.path for jaxdistill)

import numpy as np  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="t5-small:8,t5-mini:16", help="comma-separated preset:batch_size")
  p.add_argument("--steps", type=int, default=5, help="timed steps per window")
  p.add_argument("--windows", type=int, default=2)
  p.add_argument("--max_extra_windows", type=int, default=2)
  p.add_argument("--max_foreign_cpu", type=float, default=0.10,
                 help="windows during which other processes used more of the CPUs are left out")
  p.add_argument("--max_wait", type=float, default=30.0, help="seconds to wait for the CPUs to be free per window")
  p.add_argument("--row_source_len", type=int, default=0, help="packed row length (0: sized to the data)")
  p.add_argument("--row_target_len", type=int, default=0, help="packed row length (0: sized to the data)")
  p.add_argument("--packer", default="", help="first_fit | pool ('': configs/base.py)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--data", default=tt.DEFAULT_DATA)
  p.add_argument("--peak_sizes", default="1024,2048,4096")
  p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--trace_dir", default="/tmp/jaxdistill_mfu_trace")
  return p.parse_args(argv)


# --------------------------------------------------------------------------- peak


def quick_peak(n: int = 2048, reps: int = 3) -> float:
  return measure_peak([n], reps)[n]


def measure_peak(sizes, reps: int = 6) -> dict[int, float]:
  import jax
  import jax.numpy as jnp
  out = {}
  dot = jax.jit(jnp.dot)
  for n in sizes:
    rng = np.random.default_rng(n)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps if n <= 2048 else max(2, reps // 2)):
      t0 = time.perf_counter()
      dot(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    out[n] = 2 * n ** 3 / best
  return out


# --------------------------------------------------------------------------- analytical FLOPs


def t5_forward_flops(c, batch: int, len_enc: int, len_dec: int) -> dict[str, float]:
  """Matmul FLOPs (2*m*n*k) of one T5 forward on [batch, len_enc] / [batch, len_dec]."""
  d, hk, f, v = c.d_model, c.num_heads * c.d_kv, c.d_ff, c.vocab_size
  ff_mats = 3 if c.feed_forward_proj.startswith("gated") else 2
  te, td = batch * len_enc, batch * len_dec
  enc_proj = c.num_encoder_layers * 2 * te * (4 * d * hk + ff_mats * d * f)
  enc_attn = c.num_encoder_layers * 2 * 2 * batch * len_enc * len_enc * hk
  dec_proj = c.num_decoder_layers * 2 * (td * (4 * d * hk + 2 * d * hk + ff_mats * d * f) + te * 2 * d * hk)
  dec_attn = c.num_decoder_layers * 2 * 2 * batch * hk * (len_dec * len_dec + len_dec * len_enc)
  head = 2 * td * d * v
  return dict(encoder=enc_proj + enc_attn, decoder=dec_proj + dec_attn, lm_head=head,
              attention=enc_attn + dec_attn, total=enc_proj + enc_attn + dec_proj + dec_attn + head)


def train_flops(c, batch_np) -> tuple[float, float]:
  """(analytical train FLOPs of the padded step, the same scaled to non-pad tokens)."""
  b, le = batch_np["encoder_input_ids"].shape
  ld = batch_np["decoder_input_ids"].shape[1]
  fwd = t5_forward_flops(c, b, le, ld)
  enc_frac = np.count_nonzero(batch_np["encoder_segment_ids"]) / (b * le)
  dec_frac = np.count_nonzero(batch_np["decoder_segment_ids"]) / (b * ld)
  per_token = fwd["total"] - fwd["attention"]
  # Split the per-token part by which stream's tokens drive it.
  enc_part = t5_forward_flops(c, b, le, 0)["total"] - t5_forward_flops(c, b, le, 0)["attention"]
  dec_part = per_token - enc_part
  useful = enc_part * enc_frac + dec_part * dec_frac
  return 3 * fwd["total"], 3 * useful


# --------------------------------------------------------------------------- profile parsing


def hlo_categories(hlo_text: str) -> dict[str, str]:
  """instruction name -> category, from the optimised HLO text (fusions by what they contain)."""
  comps: dict[str, set[str]] = {}
  current = None
  inst_ops: dict[str, tuple[str, str | None]] = {}
  op_re = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([a-z][a-z0-9\-]*)\(")
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      comps[current] = set()
      continue
    m = op_re.match(line)
    if not m:
      continue
    name, op = m.group(1), m.group(2)
    if current is not None:
      comps[current].add(op)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    inst_ops[name] = (op, calls.group(1) if calls else None)

  def classify(ops: set[str]) -> str:
    if ops & {"dot", "convolution"}:
      return "matmul"
    if "scatter" in ops:
      return "scatter"
    if ops & {"gather", "dynamic-slice"}:
      return "gather"
    if ops & {"reduce", "reduce-window"}:
      return "reduce (softmax, norms, loss)"
    if ops <= {"copy", "transpose", "bitcast", "reshape", "broadcast", "parameter", "tuple",
               "get-tuple-element", "slice", "concatenate", "pad", "constant"}:
      return "copy/transpose/layout"
    return "elementwise"

  out = {}
  for name, (op, called) in inst_ops.items():
    ops = {op}
    if called and called in comps:
      ops = set(comps[called])
    out[name] = classify(ops - {"parameter", "tuple", "get-tuple-element"} or {op})
  return out


def parse_trace(trace_dir: str, categories: dict[str, str], steps: int):
  from jax._src.lib import _profile_data
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    return None
  data = _profile_data.ProfileData.from_file(max(files, key=os.path.getmtime))
  per_cat = collections.Counter()
  per_op = collections.Counter()
  threads = set()
  skip = ("ThunkExecutor", "SlinkyThreadPool", "end: ", "Execute")
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for ev in line.events:
        name = ev.name
        if name.startswith(skip):
          continue
        threads.add(line.name)
        per_op[name] += ev.duration_ns
        cat = categories.get(name)
        if cat is None:
          cat = ("matmul" if re.match(r"(ynn|xnn|onednn)_fusion|dot|custom-call", name) else
                 "scatter" if "scatter" in name else "gather" if "gather" in name else
                 "reduce (softmax, norms, loss)" if "reduce" in name else
                 "copy/transpose/layout" if re.match(r"(copy|transpose|bitcast)", name) else "other")
        per_cat[cat] += ev.duration_ns
  return per_cat, per_op, len(threads)


# --------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  import jax
  sizes = [int(s) for s in args.peak_sizes.split(",")]
  print(f"machine: {os.cpu_count()} CPUs ({tt.cpu_name()}), jax {jax.__version__} {jax.devices()[0].platform}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average {os.getloadavg()[0]:.2f}", flush=True)
  peak_before = measure_peak(sizes)
  peaks = list(peak_before.values())
  print("float32 jnp.dot peak: " + ", ".join(f"n={n}: {v / 1e9:.0f} GFLOP/s" for n, v in peak_before.items()),
        flush=True)

  rows = []
  for spec in args.configs.split(","):
    preset, batch_size = spec.split(":")
    targs = tt.parse_args(["--preset", preset, "--batch_size", batch_size,
                           "--row_source_len", str(args.row_source_len), "--row_target_len", str(args.row_target_len),
                           "--dtype", args.dtype, "--data", args.data, "--packer", args.packer])
    config = tt.make_config(targs)
    side = tt.JaxSide(config, tempfile.mkdtemp(prefix=f"jaxdistill_mfu_{preset}_"))
    compile_s = side.compile()
    model_config = side.student.spec.config
    probe_batch = next(side.iter)
    analytical, useful = train_flops(model_config, probe_batch)
    fwd = t5_forward_flops(model_config, *probe_batch["encoder_input_ids"].shape,
                           probe_batch["decoder_input_ids"].shape[1])
    print(f"\n{preset} batch {batch_size} rows [{side.rows[0]}|{side.rows[1]}] {targs.packer}: "
          f"{side.n_params / 1e6:.2f}M params, compile {compile_s:.1f}s", flush=True)
    print(f"  FLOPs/step: analytical {analytical / 1e9:.2f} G (attention {fwd['attention'] / fwd['total']:.1%}, "
          f"LM head {fwd['lm_head'] / fwd['total']:.1%} of forward), useful (non-pad) {useful / 1e9:.2f} G, "
          f"XLA cost_analysis {side.xla_flops / 1e9:.2f} G ({side.xla_flops / analytical:.2f}x analytical)",
          flush=True)
    side.run(2)  # warm-up
    windows = []
    for _ in range(args.windows + args.max_extra_windows):
      tt.wait_for_quiet(args.max_foreign_cpu, args.max_wait)
      before = quick_peak()
      r = side.run(args.steps)
      r["peak"] = max(before, quick_peak())
      r["mfu_adjacent"] = analytical * r["steps"] / r["seconds"] / r["peak"]
      windows.append(r)
      peaks.append(r["peak"])
      print(f"  window: {r['steps']} steps {r['seconds']:.2f}s, {analytical * r['steps'] / r['seconds'] / 1e9:.1f} "
            f"GFLOP/s, adjacent jnp.dot peak {r['peak'] / 1e9:.0f} GFLOP/s -> {r['mfu_adjacent']:.1%} "
            f"(other processes: {r['foreign_cpu']:.0%} of the CPUs)", flush=True)
      if sum(w["foreign_cpu"] <= args.max_foreign_cpu for w in windows) >= args.windows:
        break
    clean = [w for w in windows if w["foreign_cpu"] <= args.max_foreign_cpu]
    if not clean:
      print("  WARNING: every window shared the CPUs with other processes; not a clean measurement", flush=True)
    windows = clean or windows
    seconds = sum(w["seconds"] for w in windows)
    steps = sum(w["steps"] for w in windows)
    row = dict(preset=preset, batch=int(batch_size), params=side.n_params, compile_s=compile_s,
               step_s=seconds / steps, analytical=analytical, useful=useful, xla=side.xla_flops,
               attention_share=fwd["attention"] / fwd["total"], lm_head_share=fwd["lm_head"] / fwd["total"],
               examples_per_s=sum(w["examples"] for w in windows) / seconds, clean=bool(clean),
               mfu_adjacent=float(np.median([w["mfu_adjacent"] for w in windows])))
    print(f"  timed: step {row['step_s'] * 1e3:.1f} ms ({row['examples_per_s']:.1f} examples/s) over {steps} steps",
          flush=True)
    if args.profile:
      row["profile"] = profile(side, args, preset, analytical)
    rows.append(row)

  peak_after = measure_peak(sizes)
  print("\nfloat32 jnp.dot peak (after): " + ", ".join(f"n={n}: {v / 1e9:.0f} GFLOP/s" for n, v in peak_after.items()))
  peak = max(peaks + list(peak_after.values()))
  print(f"\nmeasured peak {peak / 1e9:.0f} GFLOP/s (float32 jnp.dot: the best of every measurement in this run, "
        f"so MFU errs low); load average {os.getloadavg()[0]:.2f}")
  print(f"{'preset':9s} {'batch':>5s} {'step ms':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'MFU':>6s} "
        f"{'useful MFU':>10s} {'XLA-count MFU':>13s} {'MFU vs adjacent peak':>20s}")
  for r in rows:
    rate = r["analytical"] / r["step_s"]
    print(f"{r['preset']:9s} {r['batch']:5d} {r['step_s'] * 1e3:8.1f} {r['analytical'] / 1e9:10.2f} "
          f"{rate / 1e9:8.1f} {rate / peak:6.1%} {r['useful'] / r['step_s'] / peak:10.1%} "
          f"{r['xla'] / r['step_s'] / peak:13.1%} {r['mfu_adjacent']:20.1%}"
          f"{'' if r['clean'] else '  (CONTENDED)'}")


def profile(side, args, preset: str, analytical: float) -> dict:
  import jax
  from jaxdistill.data import formats, pipeline
  # (a) host-side breakdown with a sync per step.
  t_data = t_put = t_step = 0.0
  n = args.steps
  for _ in range(n):
    t0 = time.perf_counter()
    local = next(side.iter)
    t1 = time.perf_counter()
    batch = side.partitioning.global_batch(local, side.mesh)
    jax.block_until_ready(batch)
    t2 = time.perf_counter()
    side.state, _ = side.compiled(side.state, batch)
    jax.block_until_ready(side.state)
    t3 = time.perf_counter()
    t_data, t_put, t_step = t_data + t1 - t0, t_put + t2 - t1, t_step + t3 - t2
  c, dataset = side.config, side.job.dataset
  # The pipeline alone without its prefetch thread, which train.setup always starts: built here from
  # the job's records, rows and tokenizer.
  records = formats.records_per_epoch(dataset.splits["train"], dataset.rationales, c.objective, dataset.labels,
                                      seed=c.data.seed)
  it = pipeline.make_train_iterator(records, side.job.tokenizer, per_host_batch_size=c.train.batch_size,
                                    max_source_len=side.rows[0], max_target_len=side.rows[1], packer=c.data.packer,
                                    truncate_source_len=c.data.max_source_len, truncate_target_len=c.data.max_target_len,
                                    packing=True, seed=c.data.seed + 1, prefetch=0)
  next(it)
  t0 = time.perf_counter()
  for _ in range(20):
    next(it)
  pipe_alone = (time.perf_counter() - t0) / 20
  print(f"  per step (synced): wait for batch {t_data / n * 1e3:.1f} ms, device put {t_put / n * 1e3:.1f} ms, "
        f"step {t_step / n * 1e3:.1f} ms; pipeline alone (no prefetch, text cache warm after epoch 1 only) "
        f"{pipe_alone * 1e3:.1f} ms/batch", flush=True)

  # (b) XLA trace on a fixed batch.
  trace_dir = os.path.join(args.trace_dir, preset)
  shutil.rmtree(trace_dir, ignore_errors=True)
  steps = 3
  jax.profiler.start_trace(trace_dir)
  t0 = time.perf_counter()
  for _ in range(steps):
    side.state, _ = side.compiled(side.state, batch)
  jax.block_until_ready(side.state)
  wall = time.perf_counter() - t0
  jax.profiler.stop_trace()
  cats = hlo_categories(side.compiled.as_text())
  parsed = parse_trace(trace_dir, cats, steps)
  out = dict(data_ms=t_data / n * 1e3, put_ms=t_put / n * 1e3, step_ms=t_step / n * 1e3,
             pipeline_alone_ms=pipe_alone * 1e3)
  if parsed:
    per_cat, per_op, threads = parsed
    busy = sum(per_cat.values())
    print(f"  XLA trace ({trace_dir}): {steps} steps, wall {wall / steps * 1e3:.1f} ms/step, op time summed over "
          f"{threads} XLA threads {busy / 1e6 / steps:.1f} ms/step (on average {busy / 1e9 / wall:.2f} of "
          f"{os.cpu_count()} cores busy in XLA ops)")
    for cat, ns in per_cat.most_common():
      print(f"    {cat:30s} {ns / 1e6 / steps:8.1f} ms/step  {ns / busy:6.1%}")
    mm = per_cat.get("matmul", 0) / 1e9 / steps
    if mm:
      print(f"    matmul ops alone: {analytical / mm / 1e9:.0f} GFLOP/s per busy core (analytical FLOPs / summed "
            f"matmul op time)")
    top = ", ".join(f"{k} {v / 1e6 / steps:.1f}" for k, v in per_op.most_common(8))
    print(f"    top ops (ms/step): {top}")
    out.update(categories_ms={k: v / 1e6 / steps for k, v in per_cat.items()}, trace_wall_ms=wall / steps * 1e3)
  cost = side.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    flops, nbytes = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
    print(f"  XLA cost analysis: {flops / 1e9:.2f} GFLOP, {nbytes / 1e9:.2f} GB accessed "
          f"(intensity {flops / max(nbytes, 1):.1f} FLOP/byte), transcendentals "
          f"{cost.get('transcendentals', 0.0) / 1e6:.1f} M", flush=True)
  return out



if __name__ == "__main__":
  main()

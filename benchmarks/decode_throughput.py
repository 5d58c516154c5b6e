"""Greedy decoding throughput: jaxdistill's jitted KV-cache loop vs transformers' PyTorch generate.

    python benchmarks/decode_throughput.py [--preset t5-small] [--batch_size 32] [--max_len 64]
                                           [--num_batches 4] [--repeats 2]

Same model, same prompts, same generated tokens on both sides:
  * prompts: "[rationale] premise: ... hypothesis: ..." (`formats.rationale_prompt`) of the first
    num_batches x batch_size real e-SNLI examples (`dss.read_split(.., "esnli", "valid")`),
    tokenized with the jaxdistill BPE tokenizer trained on that split (vocab 1024), right-padded
    to one common length (one jit shape);
  * model: a random-init jaxdistill T5 of `--preset` (vocab = the tokenizer's), exported with
    `hf.state_dict` into `transformers.T5ForConditionalGeneration` of the matching
    config (untied LM head, as in T5 v1.1); float32 on both sides; logits are checked equal first;
  * generation: greedy, exactly `max_len` new tokens per row. Random weights rarely emit EOS, and
    a stop would make token counts differ, so neither side stops: jaxdistill gets eos_id=-1 (never
    produced; its while_loop runs max_len steps), HF gets eos_token_id=None and
    min_new_tokens=max_new_tokens (no EOS masking, no early stop: HF's min_new_tokens would
    otherwise forbid EOS and change the argmax where EOS wins). Token agreement is reported.
jaxdistill: `decode.seq2seq_greedy_decode` (what `decode.greedy_decode` calls, with the model
split once); compile time = first call minus one steady-state batch; steady state = the mean of
`--repeats` runs of each batch. The two sides alternate batch by batch. HF: `generate(do_sample=False, num_beams=1, max_new_tokens=max_len)` under
torch.inference_mode, torch threads = CPU cores (`--torch_threads`), after a short warm-up.
cpu/wall (process CPU time over wall time) and the load average are printed: on a shared machine
they show whether another process took cores during the run. tokens/s = batch_size x max_len x batches / s
(prompt encoding included on both sides).

Where the time goes (jaxdistill): the prefill (encoder + cross-attention K/V, jitted alone) and
one decoding step (total minus prefill, over max_len), each against this machine's floors measured
in the same run: FLOPs over the float32 matmul rate at that shape (M = batch rows for a step) and,
for a step, the bytes it must read (decoder weights except cross-attention K/V, the caches) over
the streaming bandwidth (a jitted reduction of a 1 GiB array).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdistill.data import formats  # noqa: E402
from jaxdistill.data import tokenizer as tokenizer_lib  # noqa: E402
from jaxdistill.data.sources import dss  # noqa: E402
from jaxdistill.models import decode, t5  # noqa: E402
from jaxdistill.models import hf as hf_io  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "dss", "esnli")


class Clock:
  """Wall time and process CPU time (cpu/wall ~ cores actually used) of a block."""

  def __enter__(self):
    self._t, self._c = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self._t
    self.cpu = time.process_time() - self._c
    self.cores = self.cpu / self.wall


def load() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "n/a"


def prompts_and_tokenizer(data_dir: str, n: int):
  examples, rationales, _ = dss.read_split(data_dir, "esnli", "valid")
  by_id: dict[str, list] = {}
  for r in rationales:
    by_id.setdefault(r.example_id, []).append(r)
  tok = tokenizer_lib.load_tokenizer("bpe", texts=formats.tokenizer_corpus(examples, by_id, dss.NLI_LABELS),
                                     vocab_size=1024)
  if n > len(examples):
    raise ValueError(f"asked for {n} prompts, e-SNLI valid has {len(examples)}")
  rows = [tok.encode(formats.rationale_prompt(ex)) for ex in examples[:n]]
  length = max(len(r) for r in rows)
  length = -(-length // 8) * 8
  ids = np.zeros((n, length), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  return ids, tok, [len(r) for r in rows]


def hf_model_from(model: t5.T5):
  import torch
  import transformers
  c = model.config
  hf_config = transformers.T5Config(
      vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_heads=c.num_heads,
      num_layers=c.num_encoder_layers, num_decoder_layers=c.num_decoder_layers,
      relative_attention_num_buckets=c.relative_attention_num_buckets,
      relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=0.0,
      layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=c.feed_forward_proj,
      tie_word_embeddings=c.tie_word_embeddings, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  hf = transformers.T5ForConditionalGeneration(hf_config).eval()
  if not c.tie_word_embeddings:  # transformers v5 ties lm_head in memory even for v1.1 configs
    hf.lm_head.weight = torch.nn.Parameter(torch.empty(c.vocab_size, c.d_model))
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in hf_io.state_dict(model).items()}
  missing, unexpected = hf.load_state_dict(state, strict=False)
  if missing or unexpected:
    raise RuntimeError(f"HF load: missing={missing} unexpected={unexpected}")
  return hf


def best_of(fn, *args, repeats: int = 5) -> float:
  """Seconds of the fastest of `repeats` calls of a jitted fn (after one warm-up call)."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def stream_bandwidth(gib: float = 1.0) -> float:
  """Bytes/s of a jitted full read of a float32 array too big for any cache."""
  x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
  return x.nbytes / best_of(jax.jit(lambda a: jnp.sum(a * 1.0001)), x)


def matmul_rate(m: int, k: int, n: int) -> float:
  """FLOP/s of a float32 [m,k] @ [k,n] matmul."""
  a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
  return 2 * m * k * n / best_of(jax.jit(jnp.matmul), a, b, repeats=50)


def step_costs(model: t5.T5, batch: int, source_len: int, max_len: int) -> tuple[float, float, float]:
  """(prefill FLOPs, step FLOPs, step bytes): matmul FLOPs only; a step reads the decoder's weights
  (cross-attention K/V projections run at prefill) and its self- (half full on average) and
  cross-attention caches."""
  enc_params = step_params = cross_kv = 0
  for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names, size = [str(p) for p in path], leaf.get_value().size
    if names[-1] == "embedding" or names[0] == "shared" or names[-1] == "scale":
      continue
    if names[0] == "encoder":
      enc_params += size
    elif "cross_attn" in names and names[-1] in ("k", "v"):
      cross_kv += size
    else:
      step_params += size
  c = model.config
  per_position = 2 * batch * c.num_heads * c.d_kv * c.num_decoder_layers  # k and v
  prefill = 2 * batch * source_len * (enc_params + cross_kv)
  step = 2 * batch * step_params + 2 * per_position * (source_len + max_len // 2)  # + scores, mix
  step_bytes = 4 * (step_params + per_position * (source_len + max_len // 2))
  return prefill, step, step_bytes


def check_logits(model, hf, ids: np.ndarray) -> float:
  import torch
  dec_in = np.zeros((ids.shape[0], 8), np.int32)
  dec_in[:, 1:] = ids[:, :7]
  ours = nnx.jit(lambda m, e, d: m({"encoder_input_ids": e, "decoder_input_ids": d})["logits"])(
      model, jnp.asarray(ids), jnp.asarray(dec_in))
  with torch.inference_mode():
    ref = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy((ids != 0).astype(np.int64)),
             decoder_input_ids=torch.from_numpy(dec_in).long()).logits.numpy()
  return float(np.max(np.abs(np.asarray(ours) - ref)))


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="t5-small", choices=sorted(t5.PRESETS))
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--max_len", type=int, default=64, help="new tokens generated per row")
  ap.add_argument("--num_batches", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=2, help="timed passes over the batches (jaxdistill)")
  ap.add_argument("--data_dir", default=DATA)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--torch_threads", type=int, default=0, help="0: the CPU core count")
  args = ap.parse_args(argv)

  import torch
  cores = os.cpu_count() or 1
  torch.set_num_threads(args.torch_threads or cores)
  b, n_b, max_len = args.batch_size, args.num_batches, args.max_len
  ids, tok, lengths = prompts_and_tokenizer(args.data_dir, b * n_b)
  batches = [ids[i * b:(i + 1) * b] for i in range(n_b)]
  config = t5.get_config(args.preset, vocab_size=tok.vocab_size, dropout_rate=0.0)
  model = t5.T5(config, rngs=nnx.Rngs(args.seed))
  hf = hf_model_from(model)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"machine: {platform.machine()} {cores} CPU cores, jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average {load()}")
  print(f"model: {args.preset} random init, {n_params / 1e6:.1f}M params, vocab {config.vocab_size}; "
        f"prompts: {len(ids)} e-SNLI valid rationale prompts, {int(np.mean(lengths))} tokens mean, "
        f"padded to {ids.shape[1]}; batch {b} x {n_b} batches, {max_len} new tokens per row")
  print(f"logits max |jax - torch| on a teacher-forced batch: {check_logits(model, hf, batches[0]):.2e}")

  # --- jaxdistill
  graphdef, state = nnx.split(model)

  def run_jax(x):
    return decode.seq2seq_greedy_decode(graphdef, state, jnp.asarray(x), jnp.asarray((x != 0).astype(np.int32)),
                                        max_len=max_len, eos_id=jnp.int32(-1))

  # --- transformers
  hf.generation_config.eos_token_id = None

  def run_hf(x, new_tokens=max_len):
    with torch.inference_mode():
      out = hf.generate(input_ids=torch.from_numpy(x).long(),
                        attention_mask=torch.from_numpy((x != 0).astype(np.int64)),
                        do_sample=False, num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=None)
    return out[:, 1:].numpy()  # drop the decoder start token

  with Clock() as first:
    jax.block_until_ready(run_jax(batches[0]))
  run_hf(batches[0], 4)  # warm-up
  # Interleaved batch by batch, so that both sides see the same machine (shared CPUs drift).
  ours, theirs, jax_clocks, hf_clocks = [], [], [], []
  for x in batches:
    with Clock() as c:
      for r in range(args.repeats):
        out = jax.block_until_ready(run_jax(x))
    jax_clocks.append(c)
    ours.append(np.asarray(out))
    with Clock() as c:
      theirs.append(run_hf(x))
    hf_clocks.append(c)
  jax_s = sum(c.wall for c in jax_clocks) / args.repeats
  hf_s = sum(c.wall for c in hf_clocks)
  jax_cores = sum(c.cpu for c in jax_clocks) / sum(c.wall for c in jax_clocks)
  hf_cores = sum(c.cpu for c in hf_clocks) / hf_s
  compile_s = first.wall - jax_s / n_b  # first call minus one steady-state batch

  ours_all, theirs_all = np.concatenate(ours), np.concatenate(theirs)
  assert ours_all.shape == theirs_all.shape == (len(ids), max_len), (ours_all.shape, theirs_all.shape)
  same_rows = np.mean(np.all(ours_all == theirs_all, axis=1))
  same_tokens = np.mean(ours_all == theirs_all)
  diverge = np.where(np.any(ours_all != theirs_all, axis=1), np.argmax(ours_all != theirs_all, axis=1), max_len)
  tokens = b * max_len * n_b
  jax_tps, hf_tps = tokens / jax_s, tokens / hf_s
  print(f"agreement: {same_rows:.1%} of rows identical, {same_tokens:.1%} of tokens; first divergence at "
        f"step {int(diverge.min())} (rows that diverge: {int(np.sum(diverge < max_len))}/{len(ids)})")
  print(f"jaxdistill: compile {compile_s:.2f}s (first call {first.wall:.2f}s minus a steady batch); steady "
        f"{jax_s:.3f}s per {n_b} batches -> {jax_tps:,.0f} tokens/s ({jax_s / n_b / max_len * 1e3:.1f} ms/step); "
        f"cpu/wall {jax_cores:.2f}")
  print(f"transformers: {hf_s:.3f}s per {n_b} batches -> {hf_tps:,.0f} tokens/s "
        f"({hf_s / n_b / max_len * 1e3:.1f} ms/step); cpu/wall {hf_cores:.2f}")
  print(f"load average at the end: {load()} (cpu/wall well below the core count, or a high load, means "
        f"another process shared the CPUs: figures are then pessimistic, torch's the most)")
  print(f"speed-up jaxdistill / transformers: {jax_tps / hf_tps:.2f}x")
  x0, m0 = jnp.asarray(batches[0]), jnp.asarray((batches[0] != 0).astype(np.int32))
  prefill_s = best_of(jax.jit(lambda st, x, m: nnx.merge(graphdef, st).init_cache(
      nnx.merge(graphdef, st).encode(x, m), m, max_len)), state, x0, m0)
  jax_ms = jax_s / n_b / max_len * 1e3
  step_ms = (jax_s / n_b - prefill_s) / max_len * 1e3
  prefill_flops, step_flops, step_bytes = step_costs(model, b, ids.shape[1], max_len)
  d, ff = config.d_model, config.d_ff
  bandwidth, big_rate, step_rate = stream_bandwidth(), matmul_rate(b * ids.shape[1], d, ff), matmul_rate(b, d, ff)
  print(f"jaxdistill split: prefill {prefill_s * 1e3:.0f} ms per batch ({prefill_s * 1e3 / max_len:.1f} ms per "
        f"generated token, {prefill_s / (jax_s / n_b):.0%} of the time) at {prefill_flops / prefill_s / 1e9:.0f} "
        f"GFLOP/s; a step {step_ms:.1f} ms at {step_flops / step_ms / 1e6:.0f} GFLOP/s")
  print(f"floors here: float32 matmul [{b * ids.shape[1]}x{d}]@[{d}x{ff}] {big_rate / 1e9:.0f} GFLOP/s -> prefill >= "
        f"{prefill_flops / big_rate * 1e3:.0f} ms; [{b}x{d}]@[{d}x{ff}] {step_rate / 1e9:.0f} GFLOP/s -> step >= "
        f"{step_flops / step_rate * 1e3:.1f} ms; streaming {bandwidth / 1e9:.1f} GB/s x {step_bytes / 2**20:.0f} MiB "
        f"-> step >= {step_bytes / bandwidth * 1e3:.1f} ms")
  floor_ms = (prefill_flops / big_rate + max_len * max(step_flops / step_rate, step_bytes / bandwidth)) / max_len * 1e3
  hf_ms = hf_s / n_b / max_len * 1e3
  print(f"=> at most {hf_ms / floor_ms:.1f}x transformers on this machine at this shape ({floor_ms:.1f} ms per "
        f"token vs {hf_ms:.1f}; jaxdistill {jax_ms:.1f})")
  print("\n| preset | batch | new tokens | jaxdistill tok/s | transformers tok/s | ratio | jax compile s | "
        "identical rows |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.preset} | {b} | {max_len} | {jax_tps:,.0f} | {hf_tps:,.0f} | {jax_tps / hf_tps:.2f}x | "
        f"{compile_s:.1f} | {same_rows:.1%} |")


if __name__ == "__main__":
  main()

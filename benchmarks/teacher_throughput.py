"""Local teacher throughput: batched vs one prompt at a time, and `serve` under concurrent clients
vs one sequential client.

    python benchmarks/teacher_throughput.py [--preset smollm2-135m] [--batch_size 32]
        [--max_tokens 32] [--num_prompts 64] [--single_prompts 4] [--clients 8]
        [--requests_per_client 2] [--temperature 0.7]

Set-up: a random-weight Llama-family model of `--preset` (models/llama.py PRESETS, its full
vocabulary), saved with a byte-level BPE (1024 tokens, trained on the prompts) as a HF directory
in a temporary folder and loaded by `LocalTeacher`, float32. Prompts: rationale prompts of the
embedded demo task ("[rationale] premise: ... hypothesis: ..."). Every row generates exactly
`--max_tokens` tokens (EOS is switched off: random weights would otherwise stop rows at random,
and the two sides would do different work), sampled at `--temperature`.

Measured (each after a warm-up pass that compiles its shapes; tokens/s = generated tokens / wall):
  * teacher batched: `generate` over num_prompts requests, `batch_size` rows per decode;
  * teacher one at a time: the same teacher with batch_size 1 over the first `single_prompts`;
  * serve concurrent: `clients` threads, each sending `requests_per_client` /v1/completions
    requests (one prompt, n=1) back to back through the `openai` client to an in-process server
    (max_batch = clients, batch_wait_ms 10), so requests meet in shared decode batches;
  * serve sequential: one client sending the same number of requests one after another.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.decode_throughput import Clock, load  # noqa: E402
from jaxdistill import serve  # noqa: E402
from jaxdistill.data import formats  # noqa: E402
from jaxdistill.data import tokenizer as tokenizer_lib  # noqa: E402
from jaxdistill.data.sources import demo  # noqa: E402
from jaxdistill.models import hf as hf_io  # noqa: E402
from jaxdistill.models import llama  # noqa: E402
from jaxdistill.teachers import local  # noqa: E402
from jaxdistill.teachers.base import Budget, Request, Sampling, example_seed  # noqa: E402


def demo_prompts(n: int) -> list[str]:
  examples = demo.generate(0).splits["train"]
  if n > len(examples):
    raise ValueError(f"--num_prompts {n}: the demo train split has {len(examples)} examples")
  return [formats.rationale_prompt(ex) for ex in examples[:n]]


def write_checkpoint(preset: str, prompts: list[str], path: str, seed: int) -> llama.LlamaConfig:
  """A random normal(0, initializer_range) model of the preset (set in numpy: no init compile)
  with a BPE trained on the prompts, saved as a HF directory."""
  tok = tokenizer_lib.load_tokenizer("bpe", texts=prompts, vocab_size=1024)
  vocab = max(llama.PRESETS[preset]["vocab_size"], tok.num_tokens)  # llama-tiny's 256 is too few
  config = llama.get_config(preset, vocab_size=vocab, bos_token_id=None, eos_token_id=tok.eos_id,
                            pad_token_id=tok.pad_id)
  model = nnx.eval_shape(lambda: llama.build(config, nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  for row in llama.hf_mapping(model):
    shape = row.param.shape
    value = (np.ones(shape, np.float32) if len(shape) == 1 and "norm" in row.name
             else rng.normal(0, config.initializer_range, shape).astype(np.float32))
    row.param.set_value(jnp.asarray(value))
  hf_io.save(model, path, tokenizer=tok)
  return config


def requests(prompts: list[str], tag: str) -> list[Request]:
  return [Request(f"{tag}{i}", p, (0,), example_seed(f"{tag}{i}")) for i, p in enumerate(prompts)]


def warm_up(teacher, prompts: list[str], sampling: Sampling, max_rows: int) -> None:
  """Compiles every shape the timed passes can meet: each prompt-length bucket of the prompts
  with each row bucket up to max_rows (how the server batches whatever arrives together)."""
  by_bucket = {}
  for p in prompts:
    by_bucket.setdefault(local.length_bucket(len(teacher.encode_prompt(p))), p)
  batch_size, teacher.batch_size = teacher.batch_size, max_rows
  for prompt in by_bucket.values():
    rows = 1
    while True:
      ids = teacher.encode_prompt(prompt)
      teacher.decode_rows([local.Row.of(ids, 0, k, sampling) for k in range(rows)])
      if rows >= max_rows:
        break
      rows = min(2 * rows, max_rows)
  teacher.batch_size = batch_size


def teacher_pass(teacher, prompts, sampling, tag) -> tuple[int, Clock]:
  with Clock() as c:
    tokens = sum(r.completion_tokens for r in teacher.generate(requests(prompts, tag), sampling, Budget()))
  return tokens, c


def serve_pass(client, prompts: list[str], clients: int, per_client: int, args) -> tuple[int, Clock]:
  """`clients` threads each sending `per_client` requests back to back -> (tokens, clock)."""
  counts = [0] * clients

  def run(k):
    for j in range(per_client):
      out = client.completions.create(model="bench", prompt=prompts[(k * per_client + j) % len(prompts)],
                                      max_tokens=args.max_tokens, temperature=args.temperature,
                                      seed=k * per_client + j)
      counts[k] += out.usage.completion_tokens

  threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
  with Clock() as c:
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  return sum(counts), c


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="smollm2-135m", choices=sorted(llama.PRESETS))
  ap.add_argument("--batch_size", type=int, default=32, help="rows per decode batch (batched pass)")
  ap.add_argument("--max_tokens", type=int, default=32, help="new tokens per row")
  ap.add_argument("--num_prompts", type=int, default=64, help="prompts of the batched pass")
  ap.add_argument("--single_prompts", type=int, default=4, help="prompts of the one-at-a-time pass")
  ap.add_argument("--clients", type=int, default=8, help="concurrent serve clients (= max_batch)")
  ap.add_argument("--requests_per_client", type=int, default=2)
  ap.add_argument("--temperature", type=float, default=0.7)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  import openai
  prompts = demo_prompts(args.num_prompts)
  sampling = Sampling(temperature=args.temperature, max_tokens=args.max_tokens)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, args.preset)
    config = write_checkpoint(args.preset, prompts, path, args.seed)
    teacher = local.LocalTeacher(path, batch_size=args.batch_size, name="bench")
  teacher.eos_ids = (-1,)  # never produced: every row generates max_tokens (see the docstring)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(teacher.model, nnx.Param)))
  lengths = [len(teacher.encode_prompt(p)) for p in prompts]
  print(f"machine: {platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}); load average {load()}")
  print(f"model: {args.preset} random init, {n_params / 1e6:.1f}M params, vocab {config.vocab_size}, "
        f"float32; prompts: demo rationale prompts, {np.mean(lengths):.0f} tokens mean "
        f"(max {max(lengths)}); {args.max_tokens} new tokens per row, temperature {args.temperature}")

  # --- teacher: batched vs one at a time
  with Clock() as warm:
    teacher_pass(teacher, prompts, sampling, "warm")
  tokens, batched = teacher_pass(teacher, prompts, sampling, "ex")
  batched_tps = tokens / batched.wall
  print(f"teacher batched ({args.batch_size} rows): {tokens} tokens in {batched.wall:.2f}s -> "
        f"{batched_tps:,.1f} tokens/s, cpu/wall {batched.cores:.2f} (first pass with compiles {warm.wall:.1f}s)")
  teacher.batch_size = 1
  warm_up(teacher, prompts[:args.single_prompts], sampling, 1)
  tokens, single = teacher_pass(teacher, prompts[:args.single_prompts], sampling, "ex")
  single_tps = tokens / single.wall
  print(f"teacher one at a time: {tokens} tokens in {single.wall:.2f}s -> {single_tps:,.1f} tokens/s, "
        f"cpu/wall {single.cores:.2f}")

  # --- serve: concurrent clients vs one sequential client
  teacher.batch_size = args.clients
  url, stop = serve.start(teacher, max_batch=args.clients, batch_wait_ms=10)
  try:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    warm_up(teacher, prompts, sampling, args.clients)
    serve_pass(client, prompts, args.clients, 1, args)  # and the HTTP path
    batches_before = len(teacher.stats["rows_per_batch"])
    n_requests = args.clients * args.requests_per_client
    tokens, concurrent = serve_pass(client, prompts, args.clients, args.requests_per_client, args)
    rows = teacher.stats["rows_per_batch"][batches_before:]
    concurrent_tps = tokens / concurrent.wall
    print(f"serve, {args.clients} concurrent clients: {n_requests} requests, {tokens} tokens in "
          f"{concurrent.wall:.2f}s -> {concurrent_tps:,.1f} tokens/s; {len(rows)} decode batches "
          f"({np.mean(rows):.1f} rows each)")
    tokens, sequential = serve_pass(client, prompts, 1, n_requests, args)
    sequential_tps = tokens / sequential.wall
    print(f"serve, one sequential client: {n_requests} requests, {tokens} tokens in "
          f"{sequential.wall:.2f}s -> {sequential_tps:,.1f} tokens/s")
  finally:
    stop()
  print(f"load average at the end: {load()}")
  print("\n| preset | measure | jaxdistill tokens/s | baseline tokens/s | ratio |")
  print("|---|---|---|---|---|")
  print(f"| {args.preset} | teacher batched ({args.batch_size}) vs one prompt at a time | "
        f"{batched_tps:,.1f} | {single_tps:,.1f} | {batched_tps / single_tps:.1f}x |")
  print(f"| {args.preset} | serve {args.clients} concurrent clients vs sequential | "
        f"{concurrent_tps:,.1f} | {sequential_tps:,.1f} | {concurrent_tps / sequential_tps:.1f}x |")


if __name__ == "__main__":
  main()

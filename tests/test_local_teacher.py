"""LocalTeacher: prompts, per-(seed, sample) determinism across batch sizes and order, sampling,
greedy parity with `decode.causal_lm_generate`, top-k logprobs against a fresh forward pass, stop
strings / EOS / length, usage and budget, batching plan.

One tiny random-weight llama checkpoint (with a trained BPE tokenizer and a chat template) is
shared with tests/test_serve.py (`tiny_checkpoint`). Compiles dominate the time, so the tests
reuse a few sampling settings and batch shapes.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.models import decode, llama
from jaxdistill.models import hf as hf_io
from jaxdistill.teachers import local
from jaxdistill.teachers.base import Budget, Request, Sampling, example_seed

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
CORPUS = [f"the {a} {b} sat on the {c} mat, number {i}." for i, (a, b, c) in enumerate(
    (a, b, c) for a in ("black", "white", "small") for b in ("cat", "dog", "bird")
    for c in ("red", "blue"))]
PROMPTS = ["the black cat", "a small dog sat on the", "number 7", "the white bird sat on the red mat"]
SAMPLED = Sampling(temperature=1.0, max_tokens=12)
GREEDY = Sampling(temperature=0.0, max_tokens=12, top_logprobs=2)


def build_checkpoint(path: str) -> str:
  """A 2-layer llama (random normal(0, 0.3) weights: peaked enough for meaningful logprobs) with
  a 300-token byte-level BPE and a chat template, saved as a HF directory."""
  tok = tokenizer_lib.load_tokenizer("bpe", texts=CORPUS * 4, vocab_size=300)
  tok.hf.chat_template = CHAT_TEMPLATE
  config = llama.LlamaConfig(
      vocab_size=tok.num_tokens, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  model = nnx.eval_shape(lambda: llama.build(config, nnx.Rngs(0)))  # no init compile
  rng = np.random.default_rng(0)
  for row in llama.hf_mapping(model):
    row.param.set_value(jnp.asarray(rng.normal(0, 0.3, row.param.shape), jnp.float32))
  hf_io.save(model, path, tokenizer=tok)  # written to a temporary name and renamed
  return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
  """Built once per session, whichever test module asks first (test_serve imports this)."""
  path = str(tmp_path_factory.getbasetemp() / "tiny_llama_teacher")
  return path if os.path.isdir(path) else build_checkpoint(path)


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint):
  return local.LocalTeacher(tiny_checkpoint, batch_size=8, name="tiny")


@pytest.fixture(scope="module")
def teacher1(tiny_checkpoint):
  return local.LocalTeacher(tiny_checkpoint, batch_size=1)


def requests(prompts=PROMPTS, samples=(0, 1, 2)) -> list[Request]:
  return [Request(f"ex{i}", p, tuple(samples), example_seed(f"ex{i}")) for i, p in enumerate(prompts)]


def texts(responses) -> dict[tuple[str, int], str]:
  return {(r.request.example_id, c.sample_index): c.text for r in responses for c in r.completions}


@pytest.fixture(scope="module")
def sampled(teacher):
  """SAMPLED over PROMPTS x 3 samples with batch_size 8 (two batches of 6 rows)."""
  return list(teacher.generate(requests(), SAMPLED, Budget()))


# ----------------------------------------------------------------- prompts and construction


def test_prompts_and_construction(teacher, teacher1, monkeypatch):
  tok = teacher.tokenizer
  assert (teacher.name, teacher1.name) == ("tiny", "tiny_llama_teacher")  # default: the basename
  # Text prompts: as they are, no EOS (how decoder students saw their prompts in training).
  assert teacher.encode_prompt("the black cat") == tok._encode("the black cat")
  assert tok.eos_id not in teacher.encode_prompt("the black cat")
  chat = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"})
  rendered = "<|system|> be brief\n<|user|> the cat\n<|assistant|> "
  assert teacher.encode_prompt(chat) == tok._encode(rendered)
  monkeypatch.setattr(teacher, "chat_template", "none")
  assert teacher.encode_prompt(chat) == tok._encode("be brief\n\nthe cat\n")  # prompts.plain_join
  assert teacher.eos_ids == (tok.eos_id,)


def test_rejects_unsupported_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "t5"}')
  with pytest.raises(ValueError, match="model_type 't5'.*llama, qwen2, qwen3, mistral"):
    local.LocalTeacher(str(tmp_path))


# ----------------------------------------------------------------- determinism and sampling


def test_same_seed_and_sample_same_text_across_batch_sizes_and_order(teacher, teacher1, sampled):
  """Sample k of an example is the same text with batch size 1 and 8, in reversed order, and
  when a resumed run asks for some samples only."""
  reference = texts(sampled)
  assert len(reference) == 12
  one_by_one = texts(teacher1.generate(requests()[::-1], SAMPLED, Budget()))
  assert one_by_one == reference
  assert set(teacher1.stats["rows_per_batch"]) == {1}
  resumed = requests(samples=(2, 0))[::-1]  # samples 1 already cached; another batch mix
  assert texts(teacher.generate(resumed, SAMPLED, Budget())) == {
      k: v for k, v in reference.items() if k[1] in (0, 2)}


def test_samples_differ_and_follow_the_seed(teacher, sampled):
  for response in sampled:
    assert [c.sample_index for c in response.completions] == [0, 1, 2]
    got = [c.text for c in response.completions]
    assert len(set(got)) == 3, got  # temperature 1: the samples differ from each other
  other_seed = [dataclasses.replace(r, seed=r.seed + 1) for r in requests()]
  moved = texts(teacher.generate(other_seed, SAMPLED, Budget()))
  assert sum(moved[k] != v for k, v in texts(sampled).items()) >= 10


def test_greedy_equals_causal_lm_generate(teacher):
  """Temperature 0 is `decode.causal_lm_generate`'s greedy decoding (on the prompts left-padded
  to their own longest, not to the teacher's bucket)."""
  responses = list(teacher.generate(requests(samples=(0,)), GREEDY, Budget()))
  prompts = [teacher.encode_prompt(r.request.prompt) for r in responses]
  length = max(map(len, prompts))
  ids, mask = np.zeros((len(prompts), length), np.int32), np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):], mask[i, length - len(p):] = p, 1
  ref = np.asarray(decode.causal_lm_generate(teacher.model, ids, mask, max_new_tokens=GREEDY.max_tokens,
                                             eos_id=list(teacher.eos_ids)))
  for r, row in zip(responses, ref.tolist()):
    c = r.completions[0]
    assert c.token_ids == row[:len(c.token_ids)]
    assert c.text == teacher.text(c.token_ids)
    if c.finish_reason == "length":
      assert len(c.token_ids) == GREEDY.max_tokens


_SHARDED = """
import json, sys
from jaxdistill import partitioning
from jaxdistill.teachers import local
from jaxdistill.teachers.base import Budget
from tests.test_local_teacher import SAMPLED, requests
mesh = partitioning.make_mesh({"data": 2, "fsdp": 1, "tensor": 2})
teacher = local.LocalTeacher(sys.argv[1], mesh=mesh, batch_size=8)
assert teacher.shards == 2, teacher.shards
print(json.dumps([[r.request.example_id, c.sample_index, c.text]
                  for r in teacher.generate(requests(), SAMPLED, Budget()) for c in r.completions]))
"""


def test_sharded_over_a_data_and_tensor_mesh_writes_the_same_texts(tiny_checkpoint, sampled):
  """4 CPU devices as data=2 x tensor=2 (weights split over heads / mlp, rows over data): the same
  texts as one device (a new process: the device count is fixed at JAX's start)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", _SHARDED, tiny_checkpoint], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  rows = json.loads(out.stdout.strip().splitlines()[-1])
  assert {(e, k): t for e, k, t in rows} == texts(sampled)


# ----------------------------------------------------------------- logprobs


def test_topk_logprobs_equal_a_fresh_forward_pass(teacher):
  """Cached top-k logprobs of the local teacher equal a fresh teacher forward pass on the
  generated tokens (1e-4), under the raw distribution although sampling filtered it."""
  sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9, max_tokens=12, top_logprobs=5)
  responses = list(teacher.generate(requests(samples=(0, 1)), sampling, Budget()))
  forward = nnx.jit(lambda m, x: jax.nn.log_softmax(m.forward(x)[0], axis=-1))
  checked = 0
  for r in responses:
    prompt = teacher.encode_prompt(r.request.prompt)
    for c in r.completions:
      t = len(c.token_ids)
      assert t and len(c.tokens) == len(c.logprobs) == len(c.top_ids) == len(c.top_logprobs) == t
      assert all(len(x) == 5 for x in c.top_ids + c.top_tokens + c.top_logprobs)
      assert c.tokens == [teacher.piece(i) for i in c.token_ids]
      assert "".join(c.tokens).startswith(c.text) or c.text == teacher.text(c.token_ids)
      fresh = np.asarray(forward(teacher.model, jnp.asarray([prompt + c.token_ids])))[0]
      steps = fresh[len(prompt) - 1:len(prompt) - 1 + t]  # the logits that chose each token
      np.testing.assert_allclose(c.logprobs, steps[np.arange(t), c.token_ids], atol=1e-4, rtol=0)
      top = -np.sort(-steps, axis=-1)[:, :5]
      np.testing.assert_allclose(c.top_logprobs, top, atol=1e-4, rtol=0)
      np.testing.assert_allclose(np.take_along_axis(steps, np.asarray(c.top_ids), -1), top,
                                 atol=1e-4, rtol=0)
      # Sampling was filtered: each chosen token is among the 20 most likely.
      rank = (steps > steps[np.arange(t), c.token_ids][:, None]).sum(-1)
      assert (rank < 20).all()
      checked += t
  assert checked >= 40


# ----------------------------------------------------------------- ends, usage, budget


def test_stop_strings_eos_and_length(teacher, monkeypatch):
  [free] = teacher.generate(requests(PROMPTS[:1], (0,)), GREEDY, Budget())
  c = free.completions[0]
  assert c.finish_reason == "length" and free.completion_tokens == GREEDY.max_tokens
  text, ids = c.text, c.token_ids
  stop = text[5:7]
  cut = text.find(stop)
  assert 0 < cut < len(text)
  [stopped] = teacher.generate(requests(PROMPTS[:1], (0,)),
                               dataclasses.replace(GREEDY, stop=("never there", stop)), Budget())
  s = stopped.completions[0]
  assert (s.text, s.finish_reason) == (text[:cut], "stop")
  # Token lists cover the returned text (the last token may run into the stop string).
  assert s.token_ids == ids[:len(s.token_ids)] and teacher.text(s.token_ids).startswith(s.text)
  assert not teacher.text(s.token_ids[:-1]).startswith(s.text) or not s.text
  assert stopped.completion_tokens == len(s.token_ids)
  # EOS: a token the greedy row emits at step 3 (not before) ends it there.
  end = next(j for j in range(3, len(ids)) if ids[j] not in ids[:j])
  monkeypatch.setattr(teacher, "eos_ids", teacher.eos_ids + (ids[end],))
  [ended] = teacher.generate(requests(PROMPTS[:1], (0,)), GREEDY, Budget())
  e = ended.completions[0]
  assert (e.token_ids, e.finish_reason) == (ids[:end], "stop")
  assert e.text == teacher.text(ids[:end]) and ended.completion_tokens == end + 1  # + the EOS


def test_usage_budget_and_errors(teacher, sampled):
  for r in sampled:
    assert r.prompt_tokens == len(teacher.encode_prompt(r.request.prompt))
    full = sum(c.finish_reason == "length" for c in r.completions)
    assert full * SAMPLED.max_tokens <= r.completion_tokens <= 3 * SAMPLED.max_tokens
    assert r.cost_usd == 0 and not r.error and r.seconds > 0
  # $1 per token: the first request in batch order (the shortest prompt) fits, then nothing.
  lengths = {r.example_id: len(teacher.encode_prompt(r.prompt)) for r in requests()}
  first = min(lengths, key=lambda k: (lengths[k], k))
  budget = Budget(max_usd=lengths[first] + 3 * SAMPLED.max_tokens + 1, price_in_per_mtok=1e6,
                  price_out_per_mtok=1e6)
  got = list(teacher.generate(requests(), SAMPLED, budget))
  assert [r.request.example_id for r in got] == [first] and budget.exhausted
  assert got[0].cost_usd == budget.spent == got[0].prompt_tokens + got[0].completion_tokens
  assert budget.reserved == 0
  bad = [Request("empty", "", (0,), 1), Request("long", "the cat " * 200, (0,), 2),
         Request("none", "the cat", (), 3)]
  out = {r.request.example_id: r for r in teacher.generate(bad, SAMPLED, Budget())}
  assert "empty" in out["empty"].error and not out["empty"].completions
  assert "max_position_embeddings 128" in out["long"].error
  assert not out["none"].error and out["none"].completions == []
  with pytest.raises(ValueError, match="top_p"):
    list(teacher.generate(requests(), Sampling(top_p=0.0), Budget()))


# ----------------------------------------------------------------- pure helpers


def test_plan_batches_keeps_requests_whole():
  assert local.plan_batches([3, 3, 3], 8) == [[(0, 0, 3), (1, 0, 3)], [(2, 0, 3)]]
  # Larger than a batch: fills the current batch, continues in the next.
  assert local.plan_batches([2, 10, 1], 4) == [[(0, 0, 2), (1, 0, 2)], [(1, 2, 6)],
                                               [(1, 6, 10)], [(2, 0, 1)]]
  assert local.plan_batches([1] * 3, 1) == [[(0, 0, 1)], [(1, 0, 1)], [(2, 0, 1)]]


def test_buckets():
  assert [local.length_bucket(n) for n in (1, 16, 17, 25, 33, 49, 65, 97, 129, 200)] == [
      16, 16, 24, 32, 48, 64, 96, 128, 192, 256]
  assert [local.row_bucket(n, 1, 32) for n in (1, 3, 5, 8, 17, 32)] == [1, 4, 8, 8, 32, 32]
  assert local.row_bucket(3, 4, 32) == 4 and local.row_bucket(5, 4, 30) == 8
  assert local.row_bucket(9, 1, 12) == 12


def test_split_reasoning():
  assert local.split_reasoning("<think>\nhmm, 2+2\n</think>\n\n4") == ("4", "hmm, 2+2")
  assert local.split_reasoning("prompt opened it</think> yes") == ("yes", "prompt opened it")
  assert local.split_reasoning("no block") == ("no block", "")

"""Teacher-logit KD as a method (methods/kd.py, configs/kd.py) on a local teacher's cache.

The teacher is a tiny random-weight llama with a word-level tokenizer, so the text it generates
tokenizes back to the ids it generated (a byte-level BPE teacher this untrained emits token
sequences a tokenizer would never produce). `jaxdistill.teach` writes its cache with top-3 logprobs;
the student trains on it with configs/kd.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill import config as config_lib
from jaxdistill import teach, train
from jaxdistill.data import formats, sources
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.methods import kd as kd_method
from jaxdistill.models import hf as hf_io
from jaxdistill.models import llama
from tests import train_utils as tu

DEMO = {"num_train": 24, "num_dev": 8, "num_test": 8}


def _word_level_teacher(path: str, corpus) -> str:
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  words = sorted({w for text in corpus for w in pre_tokenizers.Whitespace().pre_tokenize_str(text)
                  for w in [w[0]]})
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = tokenizer_lib.HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                                          eos_token="</s>", unk_token="<unk>"), "words")
  config = llama.LlamaConfig(
      vocab_size=tok.num_tokens, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  model = nnx.eval_shape(lambda: llama.build(config, nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  for row in llama.hf_mapping(model):
    row.param.set_value(jnp.asarray(rng.normal(0, 0.3, row.param.shape), jnp.float32))
  hf_io.save(model, path, tokenizer=tok)
  return path


def _kd_config(cache: str, teacher: str, **overrides):
  sys.path.insert(0, tu.REPO)
  from configs import kd as kd_config  # pylint: disable=g-import-not-at-top
  config = kd_config.get_config()
  config.data.cache_dir = cache
  config.data.demo.update(DEMO)
  config.model.update(preset="t5-tiny", tokenizer=teacher)
  config.data.update(max_source_len=64, max_target_len=48)
  config.train.update(steps=16, batch_size=8, warmup_steps=2, log_every=4, checkpoint_every=8)
  config.eval.update(every=8, batch_size=8)
  return tu.set_keys(config, overrides)


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
  """(teacher directory, cache with 2 samples x top-3 logprobs per training example)."""
  root = tmp_path_factory.mktemp("kd")
  demo = sources.load_dataset({"source": "demo", "demo": DEMO})
  teacher = _word_level_teacher(str(root / "teacher"), formats.tokenizer_corpus(
      [ex for split in demo.splits.values() for ex in split], {}, demo.labels))
  sys.path.insert(0, tu.REPO)
  from configs import teach as teach_config  # pylint: disable=g-import-not-at-top
  config = teach_config.get_config()
  config.data.cache_dir = str(root / "cache")
  config.data.demo.update(DEMO)
  config.teacher.update(kind="local", checkpoint=teacher, samples=2, top_logprobs=3, max_tokens=20,
                        prompt="student", batch_size=16, temperature=1.0)
  teach.run(config, echo=lambda _: None)
  return teacher, str(root / "cache")


@pytest.mark.parametrize("preset", ["t5-tiny", "llama-tiny"])
def test_each_kd_token_carries_the_teachers_distribution_at_the_step_that_generated_it(teacher_cache, preset,
                                                                                      tmp_path):
  """Through setup's iterator (packing, and causal-LM rows for the decoder student): wherever a
  target token has teacher logprobs, the teacher generated exactly that token at that step, and the
  batch holds that step's cached top-k ids and logprobs."""
  teacher, cache = teacher_cache
  job = train.setup(_kd_config(cache, teacher, model__preset=preset), str(tmp_path / "w"))
  steps = {}
  for row in RationaleCache.open(cache).rows():
    for i, token in enumerate(row["token_ids"]):
      steps.setdefault((token, tuple(row["top_ids"][i])), []).append(row["top_logprobs"][i])
  checked = 0
  for _ in range(3):
    batch = next(job.train_iter)
    assert "decoder_kd_ids" not in batch
    has = np.isfinite(batch["kd_top_logprobs"]).any(-1)
    assert batch["kd_top_ids"].shape == batch["decoder_target_ids"].shape + (3,)
    assert not (has & (batch["decoder_task_ids"] != formats.RATIONALE)).any()  # rationale tokens only
    for r, p in zip(*np.nonzero(has)):
      key = (int(batch["decoder_target_ids"][r, p]), tuple(int(i) for i in batch["kd_top_ids"][r, p]))
      assert key in steps, key  # the teacher generated this token with these alternatives
      assert any(np.allclose(lp, batch["kd_top_logprobs"][r, p]) for lp in steps[key])
      checked += 1
  assert checked > 50
  assert job.methods[0].coverage["token_fraction"] > 0.8


def test_configs_kd_trains_on_the_local_teachers_cache_and_writes_metrics(teacher_cache, tmp_path):
  teacher, cache = teacher_cache
  workdir = str(tmp_path / "run")
  overrides = {"data.cache_dir": cache, "model.tokenizer": teacher, "model.preset": "t5-tiny",
               **{f"data.demo.{k}": v for k, v in DEMO.items()}, "data.max_source_len": 64,
               "data.max_target_len": 48, "train.steps": 16, "train.batch_size": 8, "train.warmup_steps": 2,
               "train.log_every": 4, "eval.every": 8, "eval.batch_size": 8}
  command = ([sys.executable, "-m", "jaxdistill.main", "--config=configs/kd.py", f"--workdir={workdir}"]
             + [f"--config.{k}={v}" for k, v in overrides.items()])
  proc = subprocess.run(command, cwd=tu.REPO, env=tu.env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics["setting"] == "kd" and metrics["steps"] == 16 and 0.0 <= metrics["test_accuracy"] <= 1.0
  assert metrics["kd"]["weight"] == 0.5 and metrics["kd"]["top_k"] == 3
  assert metrics["kd"]["token_fraction"] > 0.8 and metrics["kd"]["teacher_rationales"] == 2 * DEMO["num_train"]
  kd_loss = tu.read_scalars(workdir, "train/kd_loss")
  assert sorted(kd_loss) == [4, 8, 12, 16] and all(np.isfinite(v) and v > 0 for v in kd_loss.values())
  assert min(tu.read_scalars(workdir, "train/kd_tokens").values()) > 0


def test_a_student_with_another_tokenizer_is_refused_at_start(teacher_cache, tmp_path):
  teacher, cache = teacher_cache
  with pytest.raises(config_lib.ConfigError, match=f"not the teacher's .*--config.model.tokenizer={teacher}"):
    train.setup(_kd_config(cache, "byte"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "fingerprint.json")
  assert train.setup(_kd_config(cache, teacher), str(tmp_path / "w")).step == 0  # the fixed command runs there


def test_a_cache_without_teacher_ids_or_a_student_without_generation_is_refused(teacher_cache, tmp_path):
  teacher, cache = teacher_cache
  from tests.test_teach import ScriptedTeacher, _labels  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, tu.REPO)
  from configs import teach as teach_config  # pylint: disable=g-import-not-at-top
  config = teach_config.get_config()
  config.data.cache_dir = str(tmp_path / "api-cache")
  config.data.demo.update(DEMO)
  config.teacher.update(kind="api", base_url="http://127.0.0.1:9/v1", model="scripted", prompt="generic")
  teach.run(config, echo=lambda _: None, teacher=ScriptedTeacher(_labels(config)))
  with pytest.raises(config_lib.ConfigError, match="recorded no tokenizer fingerprint"):
    train.setup(_kd_config(config.data.cache_dir, teacher), str(tmp_path / "w1"))
  with pytest.raises(config_lib.ConfigError, match="encoder student"):
    train.setup(_kd_config(cache, teacher, model__preset="bert-tiny"), str(tmp_path / "w2"))
  with pytest.raises(config_lib.ConfigError, match="trains on none"):
    train.setup(_kd_config(cache, teacher, objective__name="baseline"), str(tmp_path / "w3"))


def test_alignment_finds_the_rationale_inside_the_teachers_output():
  assert kd_method.align((5, 6, 7, 1), (9, 5, 6, 7, 3)) == (0, 1, 3)  # answer cut off, EOS not generated
  assert kd_method.align((4, 5, 6), (5, 6, 8)) == (1, 0, 2)  # a leading space tokenized differently
  assert kd_method.align((1, 2), (3, 4)) == (0, 0, 0)

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A local JAX teacher fills a rationale cache; a student learns from it
#
# Distillation needs a teacher that explains its answers. jaxdistill keeps what a teacher wrote in a
# *rationale cache* (Parquet shards and a JSON manifest, keyed by example, teacher, prompt and sample) that
# training reads with `--config.data.cache_dir`. This notebook
#
# 1. makes a teacher: a tiny Llama-shaped model trained for a minute or two to write "rationale, then answer" on the
#    embedded task (in real use the teacher is a large pretrained model: any llama / qwen2 / qwen3 / mistral
#    Hugging Face directory, or any OpenAI-compatible server),
# 2. runs it with `python -m jaxdistill.teach` (batched KV-cache sampling, 2 samples per example) into a cache,
# 3. inspects the cache (`python -m jaxdistill.cache info` / `verify`, and pandas),
# 4. trains a T5 student on the teacher's rationales (`configs/cot.py`, the Distilling Step-by-Step recipe).
#
# About 3 minutes on two CPU cores.

# %% [markdown]
# ## Install (on Colab only)
#
# On Colab this installs jaxdistill; set `JAXDISTILL_SOURCE` to anything `pip install` takes: a clone of the
# repository uploaded to `/content/jaxdistill` (the default), or your copy's git URL (`git+https://...`).
# Elsewhere the notebook uses the jaxdistill that is already installed.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:
  JAXDISTILL_SOURCE = "/content/jaxdistill"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", JAXDISTILL_SOURCE], check=True)

# %% [markdown]
# ## Commands
#
# `sh` runs a command and shows its output as it comes: all it prints, and of its log (absl records on
# stderr) the warnings, errors and dev evaluations. A failing command raises with the end of its log.
#
# The teacher, the teach run and the student all use the same data flags (`DATA`): `teach` writes the
# examples and rationales of exactly the data that training then loads.

# %%
import os
import re
import threading

import configs

CONFIGS = os.path.dirname(configs.__file__)
LOG_RECORD = re.compile(r"^([IWEF])\d{4} ")  # an absl / XLA log record: "I1203 15:19:25.913624 ..."


def shown(record):
  """Which log records `sh` shows: warnings and errors, and the dev evaluations."""
  return LOG_RECORD.match(record).group(1) != "I" or " dev: " in record


def sh(*args):
  """Runs a command: prints its output and the log records `shown` selects; raises if it fails."""
  print("$", " ".join(args))
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = []

  def follow_log():
    show = False
    for line in proc.stderr:  # a record's continuation lines go with it
      log.append(line)
      if LOG_RECORD.match(line):
        show = shown(line)
      if show:
        print(line, end="", file=sys.stderr)

  follower = threading.Thread(target=follow_log)
  follower.start()
  output = []
  for line in proc.stdout:
    output.append(line)
    print(line, end="")
  follower.join()
  if proc.wait():
    raise RuntimeError(f"{' '.join(args[:3])} exited with status {proc.returncode}; its log ends:\n"
                       + "".join(log[-40:]))
  return "".join(output)


def flags(settings):
  return [f"--config.{key}={value}" for key, value in settings.items()]


DATA = {"data.demo.num_train": 400, "data.demo.num_dev": 50, "data.demo.num_test": 50}
TEACHER = "runs/teacher"  # its workdir; the teacher itself is the exported TEACHER/hf
CACHE = "caches/demo-teacher"
STUDENT = "runs/student-on-teacher"

# %% [markdown]
# ## 1. A teacher
#
# `llama-tiny` (a decoder-only student shape) trained with `objective.format=rationale_answer`: its target is
# "<rationale> Answer: <label>", learnt from the demo task's correct rationales only. Its best model is
# exported to `TEACHER/hf` as a Llama checkpoint, the kind of directory `teach` loads.

# %%
sh(sys.executable, "-m", "jaxdistill.main", f"--config={CONFIGS}/cot.py", f"--workdir={TEACHER}", *flags(DATA),
   *flags({"model.preset": "llama-tiny", "model.vocab_size": 512, "objective.format": "rationale_answer",
           "objective.rationales": "correct", "train.steps": 160, "train.batch_size": 8, "train.warmup_steps": 10,
           "eval.every": 160}))
print(sorted(os.listdir(os.path.join(TEACHER, "hf"))))

# %% [markdown]
# ## 2. The teacher writes rationales
#
# `teacher.prompt=student` is exactly the prompt a jaxdistill decoder student was trained on (for a real
# model the default is a few-shot prompt for the task, `jaxdistill/teachers/prompts.py`). Each training
# example gets `teacher.samples` sampled completions, parsed into rationale and answer. The summary ends in
# the teacher's accuracy.

# %%
TEACH = [sys.executable, "-m", "jaxdistill.teach", f"--config={CONFIGS}/teach.py", *flags(DATA),
         *flags({"teacher.checkpoint": f"{TEACHER}/hf", "teacher.name": "tiny-llama", "teacher.prompt": "student",
                 "teacher.samples": 2, "teacher.max_tokens": 48, "teacher.temperature": 0.7,
                 "data.cache_dir": CACHE})]
sh(*TEACH)
print(sorted(os.listdir(CACHE)))

# %% [markdown]
# The same command again asks the teacher only for what the cache lacks (keys: example, teacher, prompt id,
# sample): here nothing, so it writes no rows. After a kill it would fill exactly the gaps.

# %%
again = sh(*TEACH)
assert "this run: 0 requests, 0 new rows" in again

# %% [markdown]
# ## 3. The cache
#
# `info` compares the manifest with the shards on disk; `verify` lists every difference (and `--repair`
# rebuilds the manifest). The shards are plain Parquet: pandas reads them, so do pyarrow and
# `datasets.load_dataset("parquet", ...)`.

# %%
import json

sh(sys.executable, "-m", "jaxdistill.cache", "verify", f"--out={CACHE}")  # exit status 1 if anything differs
info = json.loads(sh(sys.executable, "-m", "jaxdistill.cache", "info", f"--out={CACHE}"))
assert info["counts"]["rationales"] == 2 * DATA["data.demo.num_train"]  # every example, both samples

# %%
import pandas as pd

rationales = pd.read_parquet(os.path.join(CACHE, "rationales"))
print(f"{len(rationales)} rows; columns: {', '.join(rationales.columns)}")
print(f"teacher accuracy {rationales.teacher_correct.mean():.3f}, "
      f"unparsed {(rationales.teacher_answer == '').sum()}, "
      f"mean completion tokens {rationales.completion_tokens.mean():.1f}")
pd.set_option("display.max_colwidth", 80)
rationales.sort_values(["example_id", "sample_index"])[
    ["example_id", "sample_index", "rationale", "teacher_answer", "teacher_correct"]].head(8)

# %% [markdown]
# ## 4. A student learns from the teacher
#
# `configs/cot.py` (label + teacher rationale, alpha = 0.5) with `data.cache_dir`: the rationales now come from
# the cache (both samples of every example, right or wrong: `objective.rationales=all`), not from the demo
# task's built-in ones. The student is a T5 this time, so a teacher and its student need not share a family.

# %%
sh(sys.executable, "-m", "jaxdistill.main", f"--config={CONFIGS}/cot.py", f"--workdir={STUDENT}", *flags(DATA),
   *flags({"data.cache_dir": CACHE, "model.preset": "t5-tiny", "model.vocab_size": 512, "train.steps": 120,
           "train.batch_size": 8, "train.warmup_steps": 10, "eval.every": 60}))
with open(os.path.join(STUDENT, "metrics.json")) as f:
  metrics = json.load(f)
print(json.dumps({k: metrics[k] for k in ("setting", "steps", "best_step", "dev_accuracy", "test_accuracy")}))
print("training examples with a teacher rationale:", metrics["data"]["rationale_coverage"])

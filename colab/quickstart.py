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
# # jaxdistill quickstart
#
# A small student learns a task from its labels *and* from explanations of them: the `hybrid` setting
# (human explanations and teacher rationales, weighted) on the embedded default task, a built-in
# miniature of e-SNLI (premise / hypothesis pairs labelled entailment, neutral or contradiction, each with
# a human explanation and teacher rationales, some of them wrong). It needs no network and no accelerator.
#
# The notebook
# 1. trains the setting with `python -m jaxdistill.main` (the command of the README, with small settings),
# 2. plots its training curves from the run's TensorBoard event files,
# 3. shows `metrics.json`,
# 4. loads the exported model (`WORKDIR/hf`) in Hugging Face transformers (PyTorch) and checks that it
#    predicts what jaxdistill predicted.
#
# About 2 minutes on two CPU cores.

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
# ## Train
#
# `sh` runs a command and shows its output as it comes: all it prints, and of its log (absl records on
# stderr, one per logged scalar) the warnings, errors and dev evaluations. A failing command raises with the
# end of its log.
#
# The setting files (`configs/*.py`) ship with the package; every key can be overridden with
# `--config.key=value` (all keys and their meaning: `jaxdistill/config.py`). Here the student is the
# smallest T5 shape (0.3M parameters), trained for 200 steps on 800 examples.

# %%
import os
import re
import threading

import configs

CONFIGS = os.path.dirname(configs.__file__)
WORKDIR = "runs/quickstart-hybrid"
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


SETTINGS = {
    "model.preset": "t5-tiny",
    "model.vocab_size": 512,  # the BPE tokenizer trained on the data
    "data.demo.num_train": 800,
    "data.demo.num_dev": 100,
    "data.demo.num_test": 100,
    "train.steps": 200,
    "train.batch_size": 16,  # packed rows of about 5 records each
    "train.warmup_steps": 20,
    "train.log_every": 10,
    "eval.every": 50,
}
sh(sys.executable, "-m", "jaxdistill.main", f"--config={CONFIGS}/hybrid.py", f"--workdir={WORKDIR}",
   *(f"--config.{key}={value}" for key, value in SETTINGS.items()))
print(sorted(os.listdir(WORKDIR)))

# %% [markdown]
# Run the cell again and the run resumes from its newest checkpoint (here: it has finished, so it only
# evaluates and exports again). Changed `SETTINGS` are refused in the same workdir (its `fingerprint.json`);
# use another `WORKDIR`.
#
# ## Training curves
#
# CLU writes every logged scalar to TensorBoard event files in the workdir (`tensorboard --logdir runs`
# shows them too); here they are read with TensorBoard's event reader and plotted with matplotlib.

# %%
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # the reader imports TensorFlow: no C++ INFO lines

import matplotlib.pyplot as plt
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

events = event_accumulator.EventAccumulator(WORKDIR, size_guidance={event_accumulator.TENSORS: 0})
events.Reload()


def curve(tag):
  points = events.Tensors(tag)
  return [p.step for p in points], [float(tensor_util.make_ndarray(p.tensor_proto)) for p in points]


fig, (losses, dev) = plt.subplots(1, 2, figsize=(11, 3.5))
for tag in ("train/loss", "train/label_loss", "train/rationale_loss"):
  losses.plot(*curve(tag), label=tag)
losses.set(xlabel="step", ylabel="cross-entropy", title="training losses")
losses.legend()
dev.plot(*curve("dev/accuracy"), "o-", label="dev accuracy")
dev.set(xlabel="step", ylabel="accuracy", title="dev evaluations", ylim=(0, 1.05))
perplexity = dev.twinx()
perplexity.plot(*curve("dev/rationale_perplexity"), "s--", color="tab:red")
perplexity.set_ylabel("rationale perplexity", color="tab:red")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## metrics.json
#
# The run's result: the best-on-dev step, its dev accuracy, the test accuracy of that model (tested once),
# rationale perplexities, the data (with the fraction of training examples that have each kind of
# rationale), the student and the mesh.

# %%
import json

with open(os.path.join(WORKDIR, "metrics.json")) as f:
  metrics = json.load(f)
print(json.dumps(metrics, indent=2))
print(f"\ndev accuracy {metrics['dev_accuracy']:.3f} (step {metrics['best_step']}), "
      f"test accuracy {metrics['test_accuracy']:.3f}")

# %% [markdown]
# ## The exported model in transformers
#
# Every run exports its best model to `WORKDIR/hf` (`config.json`, `model.safetensors` and the tokenizer),
# which transformers' PyTorch classes load as they are. The student answers a `[label] ` prompt with the label
# and a `[rationale] ` prompt with an explanation (the Distilling Step-by-Step task prefixes; the inputs are
# `premise: ... hypothesis: ...`, `jaxdistill/data/formats.py`). jaxdistill's tokenizer ends every input with
# the EOS token `</s>`, so it is appended here too.
#
# `WORKDIR/predictions.jsonl` holds jaxdistill's own prediction for every dev and test example.

# %%
import torch
import transformers

hf_dir = os.path.join(WORKDIR, "hf")
tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
model = transformers.AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()
print(type(model).__name__, f"{sum(p.numel() for p in model.parameters()):,} parameters")


def generate(prompts, max_new_tokens):
  """Greedy continuations of `prompts` (each ending in EOS, as jaxdistill encodes them)."""
  ids = [tokenizer(p).input_ids + [tokenizer.eos_token_id] for p in prompts]
  batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
  with torch.no_grad():
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
  return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


with open(os.path.join(WORKDIR, "predictions.jsonl")) as f:
  test = [row for row in map(json.loads, f) if row["split"] == "test"]
inputs = [f"premise: {row['inputs']['premise']} hypothesis: {row['inputs']['hypothesis']}" for row in test]

example = test[0]
[label] = generate(["[label] " + inputs[0]], max_new_tokens=8)
[rationale] = generate(["[rationale] " + inputs[0]], max_new_tokens=64)
print(f"premise:     {example['inputs']['premise']}\nhypothesis:  {example['inputs']['hypothesis']}")
print(f"gold:        {example['gold']}\njaxdistill:  {example['predicted']}\ntransformers: {label}")
print(f"its rationale (transformers): {rationale}")

# %% [markdown]
# The same check on the whole test split: transformers' greedy answers against jaxdistill's. Trained on a CPU
# the two agree on every example (the project's tests check that). A TPU multiplies float32 matrices in
# bfloat16 passes by default, so there an example whose two best labels nearly tie may go the other way.

# %%
labels = generate(["[label] " + text for text in inputs], max_new_tokens=8)
different = [(row["id"], row["predicted"], label) for label, row in zip(labels, test) if label != row["predicted"]]
print(f"transformers predicts what jaxdistill predicted on {len(test) - len(different)} of {len(test)} test "
      f"examples; test accuracy {sum(label == row['gold'] for label, row in zip(labels, test)) / len(test):.3f}")
assert len(different) <= 0.05 * len(test), different  # a broken export would disagree on about two in three

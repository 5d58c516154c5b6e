"""`python -m jaxdistill.compile --config=configs/hybrid.py --topology=v5e-16 [--config.key=value ...]`:
does this run fit on that TPU slice? Answered on any CPU machine, before renting the slice.

The student's train step is built as the run builds it (`train.abstract_student`, `train.make_train_step`)
but as shapes only: the (model, optimizer) state is jax.ShapeDtypeStructs carrying their shardings over
the config's mesh (`config.mesh`, `config.logical_axis_rules`) laid over the slice's devices as libtpu
describes them (topologies.py), and the batch is one real batch of the run's pipeline (its keys, dtypes
and row shape), as shapes, at `train.batch_size` rows. The TPU compiler compiles the step, nothing runs,
and the tool prints the per-device memory XLA planned (arguments, temporaries, outputs, the donated state
aliased between them, generated code, XLA's peak) against the chip's HBM, the largest arrays with their
shardings, and the step's FLOPs (XLA's count, in which a loop's body counts once). It exits with status 2
when the step does not fit, saying by how much (status 1: a refused config or slice name); a step whose
temporaries the TPU compiler itself cannot place is reported from the compiler's message. The temporaries
are the compiler's plan for that chip: with more HBM it may keep more buffers alive (v5p vs v5e).

The student's vocabulary is the run's tokenizer's by default (`--vocab=run`: a trained BPE of
`model.vocab_size` ids unless `model.tokenizer` / `model.checkpoint` names a pretrained one);
`--vocab=preset` sizes a preset as its pretrained tokenizer would (e.g. 128256 for llama-3.2-1b).

With a `teacher` section of kind local (configs/teach.py) it compiles the teacher's sampling step
instead (`decode.causal_lm_sample` as `jaxdistill.teach` calls it: `teacher.batch_size` rows, prompts
of `--prompt_len` tokens, `teacher.max_tokens` new ones, over `config.mesh`); the checkpoint's
config.json gives the shape, no weight is read.

Needs libtpu (`pip install -e '.[tpu]'`). It writes nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from jaxdistill import runtime, topologies
from jaxdistill.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/hybrid.py", "Setting config file.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e-16, v4-32, v5p-128, v6e-256 (v4 / v5p "
                                "names count TensorCores, v5e / v6e chips).")
_VOCAB = flags.DEFINE_string("vocab", "run", "The student's vocabulary: run (the run's tokenizer), preset (the "
                             "preset's pretrained vocabulary) or a number.")
_TOP = flags.DEFINE_integer("top", 10, "How many of the largest arrays to list.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "Teacher configs: the prompt length to compile for.")

GiB = topologies.GiB


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Array:
  name: str
  shape: tuple[int, ...]
  dtype: Any
  spec: Any  # the PartitionSpec
  bytes: int
  device_bytes: int


@dataclasses.dataclass
class Report:
  """What a compile planned, per device, in bytes; the step's FLOPs per device. When the TPU compiler
  itself runs out of HBM, `compiler_oom` is its message and `temp` the temporaries it asked for."""
  slice: topologies.Slice
  argument: int
  temp: int
  output: int = 0
  alias: int = 0
  code: int = 0
  peak: int = 0  # XLA's own peak of its buffer assignment (0 where jax does not report one)
  flops: float | None = None
  lower_seconds: float = 0.0
  compile_seconds: float = 0.0
  compiler_oom: str = ""
  arrays: dict[str, list[Array]] = dataclasses.field(default_factory=dict)  # "parameters", ... -> arrays

  @property
  def total(self) -> int:
    """What the step holds at once: arguments, temporaries and code, and the outputs that do not
    reuse a donated argument's buffer."""
    return self.argument + self.output - self.alias + self.temp + self.code

  @property
  def needed(self) -> int:
    """The HBM the step needs: the larger of the total and XLA's peak (after a compiler OOM: at least)."""
    return max(self.total, self.peak)

  @property
  def hbm(self) -> int:
    return self.slice.chip.hbm_bytes

  @property
  def fits(self) -> bool:
    return not self.compiler_oom and self.needed <= self.hbm


# The TPU compiler refuses a program whose temporaries cannot fit, e.g. "RESOURCE_EXHAUSTED: ... the total
# memory required for HLO temporaries (32.68G) exceeds available HBM (15.75G)" (sizes in GiB).
_COMPILER_OOM = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compile_lowered(step, tpu_slice: topologies.Slice, *args, **kwargs) -> Report:
  """Lowers and compiles the jitted `step` for `args` (ShapeDtypeStructs), and measures it."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  lowered = step.lower(*args, **kwargs)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    message = str(e).strip().splitlines()[0]
    found = _COMPILER_OOM.search(message)
    return Report(tpu_slice, argument=sum(a.device_bytes for a in arrays_of((args, kwargs))),
                  temp=int(float(found.group(1)) * _UNITS[found.group(2)]) if found else 0,
                  lower_seconds=lowered_at - start, compile_seconds=time.perf_counter() - lowered_at,
                  compiler_oom=message)
  compiled_at = time.perf_counter()
  stats = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  flops = cost.get("flops") if cost else None
  return Report(tpu_slice, argument=int(stats.argument_size_in_bytes), temp=int(stats.temp_size_in_bytes),
                output=int(stats.output_size_in_bytes), alias=int(stats.alias_size_in_bytes),
                code=int(stats.generated_code_size_in_bytes), peak=int(getattr(stats, "peak_memory_in_bytes", 0)),
                flops=None if flops is None else float(flops), lower_seconds=lowered_at - start,
                compile_seconds=compiled_at - lowered_at)


def _path_name(path) -> str:
  """A state leaf's name: its keys joined by dots."""
  parts = []
  for key in path:
    part = next((getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)), key)
    if part not in ("value", "raw_value"):
      parts.append(str(part))
  return ".".join(parts)


def arrays_of(tree, prefix: str = "") -> list[Array]:
  """Every ShapeDtypeStruct leaf of `tree` with its global and per-device bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not isinstance(leaf, jax.ShapeDtypeStruct):
      continue  # static arguments
    itemsize, sharding = leaf.dtype.itemsize, leaf.sharding
    shard = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape  # None: on every device
    out.append(Array(prefix + _path_name(path), tuple(leaf.shape), leaf.dtype, getattr(sharding, "spec", ()),
                     math.prod(leaf.shape) * itemsize, math.prod(shard) * itemsize))
  return out


# --------------------------------------------------------------------------- printing


def _gib(n: float) -> str:
  return f"{n / GiB:8.3f} GiB"


def print_arrays(groups: dict[str, list[Array]], top: int) -> None:
  for name, arrays in groups.items():
    print(f"{name}: {len(arrays)} arrays, {sum(a.bytes for a in arrays) / GiB:.3f} GiB in all, "
          f"{sum(a.device_bytes for a in arrays) / GiB:.3f} GiB per device")
  largest = sorted((a for arrays in groups.values() for a in arrays), key=lambda a: -a.device_bytes)[:top]
  print("largest arrays (per device):")
  for a in largest:
    print(f"  {a.device_bytes / 2**20:10.2f} MiB  {a.name}  {'x'.join(map(str, a.shape)) or 'scalar'} {a.dtype}  "
          f"sharded {tuple(a.spec)}")


def print_memory(report: Report) -> None:
  if report.compiler_oom:
    print(f"the TPU compiler ran out of HBM after {report.compile_seconds:.1f} s: {report.compiler_oom}")
    print(f"memory per device: at least {report.needed / GiB:.3f} GiB (arguments {report.argument / GiB:.3f} GiB, "
          f"temporaries {report.temp / GiB:.3f} GiB)")
    return
  print("memory per device:")
  shards = sum(a.device_bytes for arrays in report.arrays.values() for a in arrays)
  notes = {"arguments": f"  (the shards above, {shards / GiB:.3f} GiB, in the TPU's padded layouts)" if shards else "",
           "aliased": "  (outputs held in donated arguments' buffers: counted once)"}
  for label, value in (("arguments", report.argument), ("temporaries", report.temp), ("outputs", report.output),
                       ("aliased", report.alias), ("generated code", report.code)):
    print(f"  {label:15} {_gib(value)}{notes.get(label, '')}")
  print(f"  {'total':15} {_gib(report.total)}")
  print(f"  {'peak (XLA)':15} {_gib(report.peak)}")
  print(f"  {'needed':15} {_gib(report.needed)}  of {report.hbm / GiB:.0f} GiB HBM "
        f"({100 * report.needed / report.hbm:.1f}%)")
  if report.flops is not None:
    # XLA's cost analysis counts a loop's body once (a decode loop's steps, scanned layers).
    print(f"FLOPs per step: {report.flops:.4g} per device, {report.flops * report.slice.chips:.4g} "
          f"on the {report.slice.chips} chips (XLA's count: a loop's body counted once)")
  print(f"lowered in {report.lower_seconds:.1f} s, compiled in {report.compile_seconds:.1f} s")


def verdict(report: Report) -> str:
  chip = report.slice.chip.generation
  if report.compiler_oom and not report.needed > report.hbm:  # its message had no sizes
    return f"does not fit: the TPU compiler ran out of the {report.hbm / GiB:.0f} GiB HBM of a {chip} chip"
  if report.fits:
    return (f"fits: {report.needed / GiB:.2f} GiB of the {report.hbm / GiB:.0f} GiB HBM of a {chip} chip "
            f"({(report.hbm - report.needed) / GiB:.2f} GiB to spare)")
  at_least = "at least " if report.compiler_oom else ""
  return (f"does not fit: needs {at_least}{report.needed / GiB:.2f} GiB per device, "
          f"{(report.needed - report.hbm) / GiB:.2f} GiB more than the {report.hbm / GiB:.0f} GiB HBM of a {chip} chip "
          f"({report.needed / report.hbm:.2f}x)")


# --------------------------------------------------------------------------- the student's train step


def preset_vocab(model_config) -> int:
  """The vocabulary of the preset's pretrained model (what its own tokenizer gives)."""
  from jaxdistill.models import families  # pylint: disable=g-import-not-at-top
  if model_config.checkpoint:
    raise ConfigError("--vocab=preset: config.model.checkpoint is set, and its config.json gives the vocabulary")
  presets = families.presets()
  if model_config.preset not in presets:
    raise ConfigError(f"config.model.preset={model_config.preset!r}: unknown; known: {sorted(presets)}")
  family, family_preset, extra = presets[model_config.preset]
  return int(families.family_module(family).get_config(family_preset, **extra).vocab_size)


def student_vocab(vocab: str, config, tokenizer) -> tuple[int, str]:
  """(vocabulary size, where it comes from) by --vocab."""
  if vocab == "run":
    return tokenizer.vocab_size, f"the run's tokenizer, {tokenizer.name}"
  if vocab == "preset":
    return preset_vocab(config.model), f"the {config.model.preset} preset's"
  if not vocab.isdigit() or int(vocab) < 1:
    raise ConfigError(f"--vocab={vocab!r}: expected run, preset or a number of tokens")
  return int(vocab), "--vocab"


def compile_train_step(config, tpu_slice: topologies.Slice, devices, *, vocab: str = "run", top: int = 10) -> Report:
  """The run's student and train step as shapes over `devices`, compiled; prints the report."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxdistill import config as config_lib, partitioning, train  # pylint: disable=g-import-not-at-top

  config_lib.validate(config)
  mesh = partitioning.make_mesh(config.mesh, devices)
  hosts = len({d.process_index for d in devices})
  config_lib.validate_mesh(config, mesh, hosts)
  print(f"topology: {tpu_slice.describe()}, {hosts} hosts")
  print(f"mesh: {partitioning.describe(mesh)}")

  dataset, methods = train.load_dataset(config)
  train.check_rationales(config, dataset)
  with tempfile.TemporaryDirectory() as workdir:  # a method's start may ask for one; nothing is kept
    tokenizer = train.load_tokenizer(config, dataset, workdir, save=False)
    for method in methods:
      method.start(config, dataset, tokenizer, workdir, is_chief=False)
  vocab_size, vocab_source = student_vocab(vocab, config, tokenizer)
  student, state = train.abstract_student(config, vocab_size, mesh, len(dataset.labels or ()), methods)
  print(f"student: {train.student_name(config.model)} ({student.spec.family}, {student.kind}), "
        f"vocabulary {vocab_size} ({vocab_source})")

  # One batch of the run's pipeline gives the keys, dtypes and row shape; this one process reads all
  # train.batch_size rows, the global batch.
  rows = next(train.make_train_iterator(config, dataset, tokenizer, student, methods))
  on_batch = partitioning.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype, sharding=on_batch)
           for k, v in rows.items()}
  print("batch: " + ", ".join(f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" for k, v in sorted(batch.items())))

  arrays = {"parameters": arrays_of(state[0]),  # state = nnx.state((model, optimizer))
            "optimizer state": arrays_of(state[1], "optimizer."), "batch": arrays_of(batch)}
  print(f"parameters: {sum(math.prod(a.shape) for a in arrays['parameters']) / 1e6:.2f}M")
  print_arrays(arrays, top)
  report = compile_lowered(train.make_train_step(student, config, mesh, methods), tpu_slice, state, batch)
  report.arrays = arrays
  print_memory(report)
  return report


# --------------------------------------------------------------------------- the local teacher's decode step


def compile_teacher_decode(config, tpu_slice: topologies.Slice, devices, *, prompt_len: int = 512,
                           top: int = 10) -> Report:
  """The local teacher's sampling step as `jaxdistill.teach` runs it, compiled from the checkpoint's
  config.json alone; prints the report."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxdistill import partitioning  # pylint: disable=g-import-not-at-top
  from jaxdistill.models import decode, hf, llama  # pylint: disable=g-import-not-at-top
  from jaxdistill.teachers import local  # pylint: disable=g-import-not-at-top

  t = config.teacher
  if not t.checkpoint:
    raise ConfigError("config.teacher.checkpoint is empty: the teacher's Hugging Face directory (its config.json "
                      "gives the shape)")
  hf_config = hf.read_config(t.checkpoint)
  if hf_config.get("model_type") not in local.FAMILIES:
    raise ConfigError(f"{os.path.join(t.checkpoint, hf.CONFIG)}: model_type {hf_config.get('model_type')!r} is "
                      f"not a decoder the local teacher runs (supported: {', '.join(local.FAMILIES)})")
  mesh = partitioning.make_mesh(config.mesh, devices)
  print(f"topology: {tpu_slice.describe()}, {len({d.process_index for d in devices})} hosts")
  print(f"mesh: {partitioning.describe(mesh)}")
  model_config = llama.config_from_hf(hf_config)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: llama.build(model_config, nnx.Rngs(0))))
  shardings = partitioning.state_shardings(state, mesh, config.logical_axis_rules)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)

  # The shapes LocalTeacher pads a full batch to (rows and lengths in its buckets).
  shards = math.prod(mesh.shape[a] for a in partitioning.BATCH_AXES)
  rows = local.row_bucket(int(t.batch_size), shards, int(t.batch_size))
  length, new_tokens = local.length_bucket(prompt_len), local.length_bucket(int(t.max_tokens))
  on_batch = partitioning.batch_sharding(mesh)
  per_row = lambda dtype, *shape: jax.ShapeDtypeStruct((rows,) + shape, dtype, sharding=on_batch)
  print(f"teacher: {t.checkpoint} ({hf_config.get('model_type')}, {model_config.num_hidden_layers} layers, "
        f"hidden {model_config.hidden_size}), {rows} rows x {length} prompt tokens + {new_tokens} new tokens")
  arrays = {"parameters": arrays_of(state)}
  print(f"parameters: {sum(math.prod(a.shape) for a in arrays['parameters']) / 1e6:.2f}M")
  print_arrays(arrays, top)
  report = compile_lowered(
      decode.causal_lm_sample, tpu_slice, graphdef, state, per_row(jnp.int32, length), per_row(jnp.int32, length),
      jax.ShapeDtypeStruct((1,), jnp.int32), jax.ShapeDtypeStruct((), jnp.uint32),
      seeds=per_row(jnp.uint32), sample_ids=per_row(jnp.uint32), temperature=per_row(jnp.float32),
      top_k=per_row(jnp.int32), top_p=per_row(jnp.float32), limit=per_row(jnp.int32),
      max_new_tokens=new_tokens, filter_top_k=int(t.top_k) > 0, filter_top_p=float(t.top_p) < 1,
      top_logprobs=min(int(t.top_logprobs), model_config.vocab_size) if int(t.top_logprobs) > 0 else None,
      pad_id=0)  # the pad id only fills padding: any id compiles alike
  report.arrays = arrays
  print_memory(report)
  return report


# --------------------------------------------------------------------------- the tool


def run(config, topology: str, *, vocab: str = "run", top: int = 10, prompt_len: int = 512) -> Report:
  """Compiles the config's step for the slice `topology` and prints the report (module docstring)."""
  tpu_slice = topologies.describe(topology)
  topologies.require_libtpu()
  devices = tpu_slice.devices()
  teacher = config.get("teacher")
  if teacher is not None and teacher.kind == "local":
    return compile_teacher_decode(config, tpu_slice, devices, prompt_len=prompt_len, top=top)
  return compile_train_step(config, tpu_slice, devices, vocab=vocab, top=top)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _TOPOLOGY.value:
    raise app.UsageError("--topology is required, e.g. --topology=v5e-16")
  with runtime.refusals_as_exit():
    topologies.describe(_TOPOLOGY.value)  # a mistyped slice fails at once, before the slow imports
    runtime.prepare_process()
    import jax  # pylint: disable=g-import-not-at-top
    if not os.environ.get("JAX_PLATFORMS"):  # the slice's devices are compile-only: the host's own play no part
      jax.config.update("jax_platforms", "cpu")
    report = run(_CONFIG.value, _TOPOLOGY.value, vocab=_VOCAB.value, top=_TOP.value, prompt_len=_PROMPT_LEN.value)
  print(verdict(report), flush=True)
  if not report.fits:
    raise SystemExit(2)


if __name__ == "__main__":
  app.run(main)

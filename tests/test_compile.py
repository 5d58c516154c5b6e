"""`python -m jaxdistill.compile`: a run's train step compiled for a TPU slice on this CPU (libtpu's
compile-only devices), its per-device memory against the chip's HBM, and the refusals.

The TPU compiler is slow on this 2-core machine: a tiny student compiles in ~20 s, the real presets
in minutes each (the `slow` tests, with their measured times).
"""

import os
import re
import subprocess
import sys

import pytest

from jaxdistill import compile as compile_lib
from jaxdistill import topologies
from jaxdistill.errors import ConfigError
from tests import train_utils

REPO = train_utils.REPO
GiB = topologies.GiB
# Small enough for 16 devices and 4 hosts: the batch splits 16 ways.
SMALL = {"train.batch_size": 16, "eval.batch_size": 16, "mesh.data": 1, "mesh.fsdp": -1}


@pytest.fixture(autouse=True)
def restore_environment():
  """Compiling sets libtpu's variables (topologies.Slice.devices); other tests must not inherit them."""
  saved = dict(os.environ)
  yield
  os.environ.clear()
  os.environ.update(saved)


def tiny(preset="llama-tiny", **overrides):
  return train_utils.tiny_config(**{"model.preset": preset, **SMALL, **overrides})


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxdistill.compile", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def sharded_fraction(arrays) -> float:
  """Per-device bytes over all bytes: 1 / devices when every array is split over all of them."""
  return sum(a.device_bytes for a in arrays) / sum(a.bytes for a in arrays)


# --------------------------------------------------------------------------- slice names


@pytest.mark.parametrize("name, generation, chips, topology", [
    ("v4-8", "v4", 4, "v4:2x2x1"),  # v4 / v5p count TensorCores: two a chip
    ("v4-16", "v4", 8, "v4:2x2x2"),
    ("v5p-128", "v5p", 64, "v5p:4x4x4"),
    ("v5e-1", "v5e", 1, "v5e:1x1"),
    ("v5e-16", "v5e", 16, "v5e:4x4"),  # v5e / v6e count chips
    ("v5litepod-16", "v5e", 16, "v5e:4x4"),
    ("v5e-256", "v5e", 256, "v5e:16x16"),
    ("v6e-32", "v6e", 32, "v6e:4x8"),
])
def test_slice_names_follow_google_naming(name, generation, chips, topology):
  tpu_slice = topologies.describe(name)
  assert (tpu_slice.chip.generation, tpu_slice.chips, tpu_slice.topology_name) == (generation, chips, topology)
  devices = tpu_slice.devices()
  assert len(devices) == chips  # one device a chip (v4 / v5p: the two cores as one megacore)
  assert len({d.id for d in devices}) == chips


def test_hbm_per_chip():
  assert {g: c.hbm_bytes / GiB for g, c in topologies.CHIPS.items()} == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


@pytest.mark.parametrize("name", ["v5e-3", "v3-8", "v4-9", "v5p-7", "tpu", "v6e-512"])
def test_unknown_slice_is_refused_with_the_known_ones(name):
  with pytest.raises(ConfigError, match=r"unknown TPU slice; known: v4-8, .*v5e-16, .*v6e-256"):
    topologies.describe(name)


def test_cli_refuses_an_unknown_topology():
  out = cli("--topology=v5e-12", "--config.model.preset=llama-tiny")
  assert out.returncode == 1
  assert "error: --topology='v5e-12': unknown TPU slice; known:" in out.stderr
  assert "v5e-16" in out.stderr


@pytest.mark.parametrize("vocab", ["big", "0", "-5"])
def test_bad_vocab_is_refused(vocab):
  with pytest.raises(ConfigError, match=f"--vocab={vocab!r}: expected run, preset or a number"):
    compile_lib.student_vocab(vocab, tiny(), tokenizer=None)


def test_preset_vocab_is_the_pretrained_tokenizer_size():
  assert compile_lib.preset_vocab(tiny("llama-3.2-1b").model) == 128256
  assert compile_lib.preset_vocab(tiny("t5-base").model) == 32128
  with pytest.raises(ConfigError, match="config.model.checkpoint is set"):
    compile_lib.preset_vocab(tiny(**{"model.checkpoint": "/some/dir"}).model)


def test_without_libtpu_it_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` raises ImportError
  with pytest.raises(SystemExit, match=r"needs libtpu, which is not installed: pip install -e '\.\[tpu\]'"):
    compile_lib.run(tiny(), "v5e-16")


# --------------------------------------------------------------------------- compiling


def test_tiny_student_fits_with_its_parameters_sharded_over_fsdp(capsys):
  report = compile_lib.run(tiny(), "v5e-16")
  printed = capsys.readouterr().out
  assert "mesh: data=1 x fsdp=16 x tensor=1 (16 devices)" in printed
  assert "memory per device:" in printed and "largest arrays (per device):" in printed
  assert report.fits and 0 < report.needed < 16 * GiB
  assert report.argument > 0 and report.flops > 0
  assert report.needed >= report.argument + report.temp + report.output - report.alias
  # Every parameter and moment is split 16 ways (the norms too: their one axis is "embed" -> fsdp).
  assert sharded_fraction(report.arrays["parameters"]) == pytest.approx(1 / 16)
  assert sharded_fraction(report.arrays["optimizer state"]) == pytest.approx(1 / 16, rel=0.01)
  # The batch is one of the run's own: causal-LM rows for a decoder student, split over the data axes.
  batch = {a.name: a for a in report.arrays["batch"]}
  assert {"decoder_input_ids", "decoder_target_ids", "decoder_segment_ids"} <= set(batch)
  assert all(a.shape[0] == 16 and a.device_bytes * 16 == a.bytes for a in batch.values())


def test_activations_are_split_over_the_batch_axes_not_held_whole_on_every_chip():
  # A 100k vocabulary makes the logits the step's largest activation: 64 rows x 528 tokens x 100k x 4 bytes
  # is 12.6 GiB for the whole batch. Unconstrained, XLA followed the fsdp-sharded weights and planned them
  # whole on every chip (13.5 GiB of temporaries, measured by making common.constrain the identity); pinned
  # to the batch axes each chip holds its 1/16 (1.28 GiB of temporaries in all).
  report = compile_lib.run(tiny(**{"train.batch_size": 64}), "v5e-16", vocab="100000")
  rows, length = next(a.shape for a in report.arrays["batch"] if a.name == "decoder_input_ids")
  logits = rows * length * 100_000 * 4
  assert rows == 64 and report.fits
  assert report.temp < 3 * logits / 16, f"temporaries {report.temp / GiB:.2f} GiB: activations held whole?"


def test_cli_too_big_exits_non_zero_saying_by_how_much():
  # A million-token vocabulary: the logits of 16 rows alone are ~13 GB f32 on a single v5e chip.
  out = cli("--topology=v5e-1", "--vocab=1000000", *(f"--config.{k}={v}" for k, v in {
      **train_utils.TINY_OVERRIDES, "model.preset": "llama-tiny", "train.batch_size": 16}.items()))
  assert out.returncode == 2, out.stderr[-2000:]
  assert_does_not_fit(out.stdout, hbm=16, chip="v5e")


def assert_does_not_fit(stdout: str, hbm: int, chip: str) -> float:
  """The verdict (the last line) says by how much; returns the GiB needed."""
  verdict = stdout.strip().splitlines()[-1]
  found = re.fullmatch(rf"does not fit: needs (at least )?([\d.]+) GiB per device, ([\d.]+) GiB more than the {hbm} "
                       rf"GiB HBM of a {chip} chip \(([\d.]+)x\)", verdict)
  assert found, verdict
  needed, over = float(found.group(2)), float(found.group(3))
  assert needed > hbm and over == pytest.approx(needed - hbm, abs=0.01)
  return needed


def test_local_teacher_decode_step_compiles(tmp_path, capsys):
  import json  # pylint: disable=g-import-not-at-top
  from configs import teach  # pylint: disable=g-import-not-at-top
  from jaxdistill.models import llama  # pylint: disable=g-import-not-at-top
  (tmp_path / "config.json").write_text(json.dumps(llama.hf_config(llama.get_config("llama-tiny"))))
  config = train_utils.set_keys(teach.get_config(), {"teacher.checkpoint": str(tmp_path), "teacher.batch_size": 8,
                                                     "teacher.max_tokens": 32, "teacher.top_logprobs": 4})
  report = compile_lib.run(config, "v5e-4", prompt_len=40)
  assert report.fits and report.flops > 0
  assert "8 rows x 48 prompt tokens + 32 new tokens" in capsys.readouterr().out  # LocalTeacher's buckets


# --------------------------------------------------------------------------- the real presets (slow)


def preset_config(preset, **overrides):
  """configs/hybrid.py (the demo data) with `preset` over an FSDP mesh of every device."""
  from configs import hybrid  # pylint: disable=g-import-not-at-top
  return train_utils.set_keys(hybrid.get_config(), {"model.preset": preset, "mesh.data": 1, "mesh.fsdp": -1,
                                                     **overrides})


# Scanned layers compile in 16-60 s each on this 2-core machine (an unscanned 1B preset takes 2-6 min:
# benchmarks/compile_memory.py measures both), so every preset compiles twice, without and with remat.
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["llama-3.2-1b", "qwen3-0.6b", "t5-base", "deberta-v3-base"])
def test_presets_fit_a_v5e_16_with_fsdp_and_remat_cuts_their_temporaries(preset, capsys):
  reports = {remat: compile_lib.run(preset_config(preset, **{"model.scan_layers": True, "model.remat": remat}),
                                    "v5e-16", vocab="preset") for remat in ("none", "full")}
  printed = capsys.readouterr().out
  for report in reports.values():
    assert report.fits and report.needed < 16 * GiB, printed
    assert f"{report.needed / GiB:8.3f} GiB  of 16 GiB HBM" in printed
    # FSDP splits the parameters and Adam's moments 16 ways (a few small ones, e.g. qwen3's per-head
    # norms, stay whole; the stacked layers' leading axis is not split).
    assert sharded_fraction(report.arrays["parameters"]) == pytest.approx(1 / 16, rel=0.02)
    assert sharded_fraction(report.arrays["optimizer state"]) == pytest.approx(1 / 16, rel=0.02)
    # XLA's arguments are those shards (state and batch) in the TPU's padded layouts: measured 1.00x the
    # shards' bytes for llama-3.2-1b, 1.10x deberta-v3-base, 1.34x t5-base.
    shards = sum(a.device_bytes for arrays in report.arrays.values() for a in arrays)
    assert shards <= report.argument < 1.5 * shards
  # Remat keeps each layer's input instead of its activations: measured 0.25x (t5-base) to 0.42x
  # (deberta-v3-base) the temporaries; the arguments (parameters, optimizer state, batch) stay the same.
  assert reports["full"].temp < 0.6 * reports["none"].temp
  assert reports["full"].argument == reports["none"].argument


@pytest.mark.slow  # 37 s at load ~3 (the compiler stops early: out of HBM), minutes when the machine is busy
def test_llama_1b_does_not_fit_one_v5e_chip():
  report = compile_lib.run(preset_config("llama-3.2-1b", **{"mesh.fsdp": 1}), "v5e-1", vocab="preset")
  assert not report.fits
  # Its parameters and Adam's two moments alone, f32 on one chip: 14 GiB of the 16.
  assert report.argument >= 13.8 * GiB
  assert report.needed > 16 * GiB
  assert compile_lib.verdict(report).startswith("does not fit: needs ")

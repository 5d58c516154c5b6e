"""TPU slices by their Cloud names (`v5e-16`, `v4-32`, `v5p-128`, `v6e-256`) as compile-only devices.

`describe("v5e-16")` -> a Slice: the chip, its HBM, the topology shape and, with `devices()`, the
slice's devices as libtpu describes them (`jax.experimental.topologies.get_topology_desc`), on any
machine, without a TPU: what `jaxdistill.compile` lowers and compiles a step against.

Names follow Google's accelerator types: v4 and v5p count TensorCores (two per chip, driven as one
"megacore" device: v4-16 is 8 chips), v5e (alias v5litepod) and v6e count chips. HBM per chip from
Google's system-architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): v4 32 GiB, v5e
16 GiB, v5p 95 GiB, v6e 32 GiB; one device = one chip on all four, so that is the per-device budget
(the runtime keeps a little of it for itself, so a step within a few percent of it may still fail).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from jaxdistill.errors import ConfigError

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str  # as in the slice name: v4 | v5e | v5p | v6e
  topology_prefix: str  # libtpu's name of the chip in topology names
  hbm_bytes: int
  cores_per_chip: int  # TensorCores; the slice name counts these for v4 / v5p
  shapes: dict[int, tuple[int, ...]]  # chips -> the topology's shape (Google's supported slices)


# Supported single-slice shapes (chips -> topology), from the generations' configuration tables.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}

CHIPS = {
    "v4": Chip("v4", "v4", 32 * GiB, 2, _SHAPES_3D),
    "v5e": Chip("v5e", "v5e", 16 * GiB, 1, _SHAPES_2D),
    "v5p": Chip("v5p", "v5p", 95 * GiB, 2, {**_SHAPES_3D, 6144: (16, 16, 24)}),
    "v6e": Chip("v6e", "v6e", 32 * GiB, 1, _SHAPES_2D),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str  # as given, e.g. "v5e-16"
  chip: Chip
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    """libtpu's name, e.g. "v5e:4x4"."""
    return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"

  def describe(self) -> str:
    return (f"{self.name}: TPU {self.chip.generation} {self.topology_name}, {self.chips} chips, "
            f"{self.chip.hbm_bytes / GiB:.0f} GiB HBM per chip")

  def topology_kwargs(self) -> dict:
    """get_topology_desc's layout arguments: the megacore chip (v4 / v5p), four chips a host
    (2x2x1, eight on the one-host 2x4 v5e / v6e slice), and the torus wrap-around links
    (v4 / v5p: slices of whole 4x4x4 cubes; v5e / v6e: a full 16-chip dimension)."""
    if len(self.shape) == 3:
      host = tuple(min(h, s) for h, s in zip((2, 2, 1), self.shape))
      wrap = (all(s % 4 == 0 for s in self.shape),) * 3
      return {"chip_config_name": "megacore", "chips_per_host_bounds": host, "wrap": wrap, "num_slices": 1}
    host = (2, 4, 1) if self.shape == (2, 4) else tuple(min(h, s) for h, s in zip((2, 2, 1), self.shape + (1,)))
    wrap = tuple(s == 16 for s in self.shape) + (False,)
    return {"chips_per_host_bounds": host, "wrap": wrap, "num_slices": 1}

  @property
  def accelerator_type(self) -> str:
    """Google's name of the slice ("v5litepod-16" for v5e-16)."""
    prefix = "v5litepod" if self.chip.generation == "v5e" else self.chip.generation
    return f"{prefix}-{self.chips * self.chip.cores_per_chip}"

  def devices(self) -> list:
    """The slice's compile-only devices (needs libtpu: `require_libtpu`)."""
    # libtpu looks for the TPU VM it runs on (the metadata server, these variables) and, not finding
    # one, logs alarming errors; compiling for a described slice needs none of it. Several processes
    # may compile at once: none of them opens a TPU, so libtpu's one-process lock is not wanted.
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", self.accelerator_type),
                       ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
      os.environ.setdefault(key, value)
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    return list(topologies.get_topology_desc(platform="tpu", topology_name=self.topology_name,
                                             **self.topology_kwargs()).devices)


def known_names() -> list[str]:
  """Every slice name `describe` accepts (besides the v5litepod alias)."""
  return [f"{gen}-{chips * chip.cores_per_chip}" for gen, chip in CHIPS.items() for chips in chip.shapes]


def describe(name: str) -> Slice:
  """The slice of a Cloud TPU accelerator name; ConfigError listing the known ones otherwise."""
  match = re.fullmatch(r"(v\w+?)-(\d+)", name.strip().lower())
  generation = ALIASES.get(match.group(1), match.group(1)) if match else None
  chip = CHIPS.get(generation)
  if chip is None or int(match.group(2)) % chip.cores_per_chip or (
      int(match.group(2)) // chip.cores_per_chip not in chip.shapes):
    raise ConfigError(f"--topology={name!r}: unknown TPU slice; known: {', '.join(known_names())} "
                     f"(v4 / v5p count TensorCores, two a chip; v5e (= v5litepod) / v6e count chips)")
  return Slice(name, chip, chip.shapes[int(match.group(2)) // chip.cores_per_chip])


LIBTPU_MISSING = ("compiling for a TPU topology needs libtpu, which is not installed: "
                  "pip install -e '.[tpu]'")


def require_libtpu() -> None:
  """SystemExit with the install command when libtpu cannot be imported."""
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit(f"error: {LIBTPU_MISSING}") from None

"""The environment `make test` builds is the one constraints.txt pins (the stack the suite was run on)."""

from __future__ import annotations

import importlib.metadata
import pathlib

import packaging.requirements
import packaging.utils
import packaging.version

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
  pins = {}
  for line_no, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    req = packaging.requirements.Requirement(line)
    (spec,) = req.specifier  # one exact pin per line
    assert spec.operator == "==", f"constraints.txt:{line_no}: {line!r} is not an exact pin"
    pins[packaging.utils.canonicalize_name(req.name)] = spec.version
  return pins


def test_every_installed_pinned_package_has_its_pinned_version():
  pins = _pins()
  installed = {packaging.utils.canonicalize_name(d.metadata["Name"]): d.version
               for d in importlib.metadata.distributions()}
  wrong = {name: (installed[name], pinned) for name, pinned in pins.items()
           if name in installed and packaging.version.Version(installed[name]) != packaging.version.Version(pinned)}
  assert not wrong, f"installed != constraints.txt (run `make install-test` again): {wrong}"
  for core in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "clu", "transformers", "libtpu"):
    assert core in pins, f"{core} is not pinned in constraints.txt"
    assert core in installed, f"{core} is pinned but not installed"


def test_constraints_cover_every_runtime_dependency():
  pins = _pins()
  requires = importlib.metadata.requires("jaxdistill") or []
  runtime = [packaging.requirements.Requirement(r) for r in requires]
  missing = [r.name for r in runtime if r.marker is None and packaging.utils.canonicalize_name(r.name) not in pins]
  assert not missing, f"dependencies of jaxdistill without a pin in constraints.txt: {missing}"

"""config.py: one place for defaults, and a config checked whole at start (unknown keys included)."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

from jaxdistill import config as config_lib
from tests import train_utils as tu

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETTINGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
# Variable names under which library code reads a config section with cfg_get -> that section.
SECTION_OF = {"config_data": "data", "data": "data", "objective": "objective", "objective_config": "objective"}
# cfg_get fallbacks that differ from defaults() on purpose.
DIFFERENT_ON_PURPOSE = {
    ("data", "task"): "a source reading one benchmark defaults to its own task (dss: esnli; jsonl: the files')",
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_shipped_setting_uses_only_known_keys(setting):
  sys.path.insert(0, tu.REPO)
  config = importlib.import_module(f"configs.{setting}").get_config()
  assert config_lib.unknown_keys(config) == []


def test_a_typo_in_a_setting_file_is_refused_with_the_closest_key():
  config = tu.tiny_config()
  config.objective.alhpa = 0.3  # a setting file can add keys; an override flag cannot
  with pytest.raises(config_lib.ConfigError, match=r"config.objective.alhpa: no such key .*did you mean objective.alpha"):
    config_lib.validate(config)
  config = tu.tiny_config()
  config.kd_section = {"weight": 1.0}
  with pytest.raises(config_lib.ConfigError, match="config.kd_section: no such key"):
    config_lib.validate(config)
  config = tu.tiny_config()
  config.kd = {"weight": 1.0}  # an optional section is its owner's to check
  config_lib.validate(config)


def _cfg_get_defaults():
  """(file, line, section, key, default) of every literal `cfg_get(<section var>, "key", default)`."""
  for path in sorted((ROOT / "jaxdistill").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cfg_get" and len(node.args) == 3
          and isinstance(node.args[0], ast.Name) and node.args[0].id in SECTION_OF
          and isinstance(node.args[1], ast.Constant)):
        try:
          default = ast.literal_eval(node.args[2])
        except ValueError:
          continue
        yield path.relative_to(ROOT), node.lineno, SECTION_OF[node.args[0].id], node.args[1].value, default


def test_library_fallbacks_agree_with_the_defaults():
  """Library functions take plain dicts too (tests, notebooks), so they keep fallbacks for missing keys;
  every fallback is defaults()'s value, so a dict config and a full one behave alike."""
  defaults = config_lib.defaults()
  checked = 0
  for path, line, section, key, default in _cfg_get_defaults():
    if (section, key) in DIFFERENT_ON_PURPOSE or default is None or key not in defaults[section]:
      continue
    assert default == defaults[section][key], f"{path}:{line}: cfg_get default {default!r} != {section}.{key}"
    checked += 1
  assert checked > 20


def test_a_key_added_since_the_workdir_was_made_is_no_change_at_its_default(tmp_path):
  from jaxdistill import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  defaults = workdir_lib.flat_defaults(config_lib.defaults())
  old = {k: v for k, v in defaults.items() if k != "data.shuffle_seed"}  # made before the key existed
  workdir_lib.check(str(tmp_path), old, allow_change=False, write=True)
  assert workdir_lib.check(str(tmp_path), defaults, allow_change=False, write=False, defaults=defaults) == []
  changed = dict(defaults, **{"data.shuffle_seed": 3})
  with pytest.raises(config_lib.ConfigError, match=r"data.shuffle_seed \(unset -> 3\)"):
    workdir_lib.check(str(tmp_path), changed, allow_change=False, write=False, defaults=defaults)

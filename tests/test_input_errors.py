"""Bad inputs outside the data files: a model checkpoint directory without config.json."""

import re

import pytest

from jaxdistill.models import families, hf, students


def test_checkpoint_dir_without_config_json(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{}")  # looks like a model directory, but no config.json
  config = re.escape(str(tmp_path / "config.json"))
  # checkpoint_dir serves the model and the tokenizer ("auto" resolves to the checkpoint directory).
  with pytest.raises(FileNotFoundError, match=rf"config\.model\.checkpoint='.*': {config} is missing"):
    students.checkpoint_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=rf"{config} is missing"):
    families.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"nope: no such directory"):
    hf.read_config(str(tmp_path / "nope"))
  assert students.checkpoint_dir("") == ""

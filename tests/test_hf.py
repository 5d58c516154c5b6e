"""HF checkpoint directories: sharded safetensors with an index, loading onto a mesh, clear errors."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from configs import base
from jaxdistill import partitioning
from jaxdistill.models import families, hf, llama


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  model = llama.build(llama.get_config("llama-tiny", vocab_size=128), nnx.Rngs(3))
  path = str(tmp_path_factory.mktemp("hf") / "llama")
  hf.save(model, path)
  return model, path


def _shard(path: str, out: str) -> None:
  """Rewrites a single-file checkpoint as two shards + model.safetensors.index.json."""
  os.makedirs(out)
  tensors = load_file(os.path.join(path, hf.WEIGHTS))
  names = sorted(tensors)
  weight_map = {}
  for i, part in enumerate((names[::2], names[1::2])):
    file = f"model-0000{i + 1}-of-00002.safetensors"
    save_file({n: tensors[n] for n in part}, os.path.join(out, file))
    weight_map.update(dict.fromkeys(part, file))
  with open(os.path.join(out, hf.INDEX), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(path, hf.CONFIG)) as src, open(os.path.join(out, hf.CONFIG), "w") as dst:
    dst.write(src.read())


def test_sharded_index_loads_onto_mesh(saved, tmp_path):
  model, path = saved
  _shard(path, str(tmp_path / "sharded"))
  mesh = partitioning.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  loaded = families.load(str(tmp_path / "sharded"), mesh=mesh, rules=base.get_config().logical_axis_rules)
  want, got = hf.state_dict(model), hf.state_dict(loaded)
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  leaf = jax.tree.leaves(nnx.state(loaded, nnx.Param))[0]
  assert isinstance(leaf.sharding, jax.sharding.NamedSharding) and leaf.sharding.mesh.shape == mesh.shape


def test_load_errors_name_the_directory(saved, tmp_path):
  _, path = saved
  with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
    families.load(str(tmp_path))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
  with pytest.raises(ValueError, match="gpt_neox.*not supported"):
    families.load(str(bad))
  (bad / "config.json").write_text(json.dumps(hf.read_config(path)))
  with pytest.raises(FileNotFoundError, match="no model.safetensors"):
    families.load(str(bad))


def test_export_after_a_killed_export_replaces_its_leftovers(saved, tmp_path):
  """A kill between the swap's renames left `hf.old` (then every later export failed: a directory
  cannot be renamed onto a non-empty one); a kill mid-write left `hf.tmp` with stray files."""
  model, _ = saved
  path = str(tmp_path / "hf")
  hf.save(model, path)
  for leftover in (path + ".old", path + ".tmp"):
    os.makedirs(leftover)
    with open(os.path.join(leftover, "stray.bin"), "wb") as f:
      f.write(b"half")
  hf.save(model, path)
  assert sorted(os.listdir(tmp_path)) == ["hf"]
  assert sorted(os.listdir(path)) == sorted([hf.CONFIG, hf.WEIGHTS])
  assert load_file(os.path.join(path, hf.WEIGHTS)).keys() == hf.state_dict(model).keys()

"""Helpers shared by the golden-logit tests of the model families."""

import numpy as np


def torch_state(model) -> dict[str, np.ndarray]:
  """A transformers PyTorch model's state dict as float numpy arrays (HF names, torch layout)."""
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def assert_state_dicts_equal(exported: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
  """Same tensor names, bit-identical values."""
  assert set(exported) == set(reference)
  for name, value in reference.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)


def assert_exports_identical(a, b) -> None:
  """Two `hf.save` directories hold the same files with the same bytes (config.json and the weights)."""
  names = sorted(p.name for p in a.iterdir())
  assert names == sorted(p.name for p in b.iterdir())
  for name in names:
    assert (a / name).read_bytes() == (b / name).read_bytes(), name

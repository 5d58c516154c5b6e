"""The family registry: each family module describes itself, and the lookups agree with what it declares."""

import pytest
from flax import nnx

from jaxdistill.models import families


@pytest.mark.parametrize("family", sorted(families.FAMILIES))
def test_a_family_describes_itself(family):
  module = families.family_module(family)
  assert families.kind(family) == module.KIND in ("seq2seq", "encoder", "decoder")
  assert module.MODEL_TYPES and all(families.model_types()[t] == family for t in module.MODEL_TYPES)
  for name, (family_preset, overrides) in module.STUDENT_PRESETS.items():
    assert family_preset in module.PRESETS, name
    assert families.presets()[name] == (family, family_preset, overrides)
  tiny, _ = next(iter(module.STUDENT_PRESETS.values()))
  config = module.get_config(tiny, vocab_size=64)
  assert all(hasattr(config, field) for field in module.DROPOUT_FIELDS)
  model = nnx.eval_shape(lambda: module.build(config, nnx.Rngs(0)))
  assert families.family_of(model) == family


def test_kinds_and_model_types():
  assert {f: families.kind(f) for f in families.FAMILIES} == {
      "t5": "seq2seq", "bert": "encoder", "deberta": "encoder", "llama": "decoder"}
  assert families.family_for({"model_type": "qwen3"}) == "llama"
  assert families.family_for({"model_type": "roberta"}) == "bert"


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match="gpt_neox.*not supported"):
    families.family_for({"model_type": "gpt_neox"})
  with pytest.raises(ValueError, match="unknown model family 'gpt'"):
    families.family_module("gpt")
  with pytest.raises(ValueError, match="not a model of a registered family"):
    families.family_of(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))

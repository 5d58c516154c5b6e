"""Student kinds: what differs between seq2seq, encoder and decoder students, one adapter each.

  kind      rows it trains on                 its label at evaluation             exported to transformers
  seq2seq   the pipeline's seq2seq batch      greedy decoding from the encoder    the whole model
  encoder   the seq2seq batch                 argmax of the classification head   the encoder (heads stay
                                                                                  in WORKDIR/best)
  decoder   causal-LM rows (prompt + target)  greedy decoding after the prompt    the whole model

A family module names its kind (models/students.py); everything else that depends on the kind asks
`of(kind)`: the training iterator and evaluation batches (`batch_view`), the Evaluator (`label_inputs`,
`predict_texts`), the label loss term (objectives/losses.py), export and the checks of a setting.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from flax import nnx

from jaxdistill.data import pipeline
from jaxdistill.models import decode

Batch = dict[str, np.ndarray]


class Kind:
  name = ""
  generates = True  # the label is generated text (else a classification head's class)

  def batch_view(self, tokenizer) -> Callable[[Batch], Batch] | None:
    """Turns the pipeline's seq2seq batch into the rows this kind reads (None: as it is)."""
    return pipeline.batch_view(self.name, tokenizer)

  def label_inputs(self, batch: Batch, tokenizer) -> Batch:
    """What label prediction feeds the student, from an unpacked evaluation batch."""
    del tokenizer
    return {k: batch[k] for k in ("encoder_input_ids", "encoder_segment_ids")}

  def predict_texts(self, model, inputs: dict[str, Any], *, max_new_tokens: int, tokenizer,
                    labels: Sequence[str] | None, to_host: Callable) -> list[str]:
    """Each row's predicted text: the generated text, or the head's label."""
    raise NotImplementedError

  def generate_texts(self, model, inputs: dict[str, Any], *, max_new_tokens: int, tokenizer, to_host: Callable
                     ) -> list[str]:
    """Each row's generated text (e.g. an explanation from a rationale prompt)."""
    return self.predict_texts(model, inputs, max_new_tokens=max_new_tokens, tokenizer=tokenizer, labels=None,
                              to_host=to_host)

  def exported(self, model):
    """The module exported as a Hugging Face model."""
    return model


class Seq2Seq(Kind):
  name = "seq2seq"

  def predict_texts(self, model, inputs, *, max_new_tokens, tokenizer, labels, to_host):
    del labels
    ids = decode.greedy_decode(model, inputs["encoder_input_ids"], inputs["encoder_segment_ids"],
                               max_len=max_new_tokens, eos_id=tokenizer.eos_id)
    return [tokenizer.decode(row.tolist()) for row in to_host(ids)]


class Decoder(Kind):
  name = "decoder"

  def label_inputs(self, batch, tokenizer):
    prompt, mask = pipeline.left_padded_prompts(batch, tokenizer.pad_id, tokenizer.eos_id)
    return {"prompt": prompt, "mask": mask}

  def predict_texts(self, model, inputs, *, max_new_tokens, tokenizer, labels, to_host):
    del labels
    ids = decode.causal_lm_generate(model, inputs["prompt"], inputs["mask"], max_new_tokens=max_new_tokens,
                                    eos_id=tokenizer.eos_id)
    return [tokenizer.decode(row.tolist()) for row in to_host(ids)]


class Encoder(Kind):
  name = "encoder"
  generates = False

  def predict_texts(self, model, inputs, *, max_new_tokens, tokenizer, labels, to_host):
    del max_new_tokens, tokenizer
    classes = np.argmax(to_host(_classify(model, inputs["encoder_input_ids"], inputs["encoder_segment_ids"])), -1)
    return [labels[c] for c in classes]

  def generate_texts(self, model, inputs, *, max_new_tokens, tokenizer, to_host):
    ids = decode.explain_greedy(model, inputs["encoder_input_ids"], inputs["encoder_segment_ids"],
                                max_len=min(max_new_tokens, model.config.max_target_len),
                                start_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    return [tokenizer.decode(row.tolist()) for row in to_host(ids)]

  def exported(self, model):
    return model.encoder


@nnx.jit
def _classify(model, input_ids, segment_ids):
  return model.classify(input_ids, segment_ids)


KINDS: dict[str, Kind] = {k.name: k for k in (Seq2Seq(), Encoder(), Decoder())}


def of(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown student kind {name!r} (known: {sorted(KINDS)})")
  return KINDS[name]

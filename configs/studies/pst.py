"""Does answer-first help, and does learning the rationale in the semantic space? Rationale-first vs
answer-first targets x token / semantic / both rationale losses (Post-Semantic-Thinking), 3 seeds,
on the embedded demo task with its teacher rationales; decoding timed on every run's test split.

  python -m jaxdistill.study --config=configs/studies/pst.py [--workdir=runs/studies/pst]

Reference: rationale-first with token cross-entropy (Distilling Step-by-Step's chain of thought).
Reduced budget for a 2-core CPU: t5-tiny, 300 steps of 16 packed rows on 2,000 training examples
(18 runs; measured: 24 min on this 2-core machine with other jobs running). On one GPU:
--config.base.model.preset=t5-mini --config.base.train.steps=600 --config.base.train.batch_size=32
--config.base.data.demo.num_train=4000.
"""

import ml_collections

from configs import pst as pst_config

FORMATS = {"rationale_first": "rationale_answer", "answer_first": "answer_rationale"}
LOSSES = ("token", "semantic", "both")


def get_config():
  base = pst_config.get_config()
  base.model.preset = "t5-tiny"
  base.data.demo.num_train = 2000
  base.train.update(steps=300, batch_size=16, checkpoint_every=100, log_every=50)
  base.eval.update(every=100, measure_decode=True, write_rationales=True)  # answer-first: decode the rationale too

  study = ml_collections.ConfigDict()
  study.name = "pst"
  study.base = base
  study.variants = ml_collections.ConfigDict({
      f"{order}-{loss}": {"objective": {"format": fmt, "rationale_loss": loss}}
      for order, fmt in FORMATS.items() for loss in LOSSES})
  study.seeds = (0, 1, 2)
  study.reference = "rationale_first-token"
  study.hypothesis_only = False
  study.bootstrap_resamples = 2000
  # metrics.json keys reported per variant (mean over seeds [t CI]): the decode timings of eval.measure_decode
  study.metrics = (("test rationale ppl", "test_rationale_perplexity"),
                   ("decode s (as evaluated)", "decode.answer_seconds"),
                   ("decode s (answer + rationale)", "decode.full_seconds"),
                   ("early-stop speed-up", "decode.speedup"))
  return study

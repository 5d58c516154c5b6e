"""Trace-based distillation: train on rule-based traces, check every step of the student's own.

  python -m jaxdistill.main --config=configs/traces.py                # correct traces (offline, bAbI-style)
  python -m jaxdistill.main --config=configs/traces.py:incorrect      # variant: none | correct | incorrect | mixed
  python -m jaxdistill.study --config=configs/studies/traces.py       # all four x 3 seeds + report

Variants (jaxdistill/traces/experiment.py):
  none       answer only (objective baseline): the no-trace baseline
  correct    "<gold trace> Answer: <label>" (objective cot, format rationale_answer)
  incorrect  the same with `traces.corrupt_step` wrong in a `traces.corrupt_rate` fraction of the
             training examples (the answer stays gold: a wrong trace, a right label)
  mixed      the gold trace and, at corrupt_rate, a corrupted one beside it (half weight each)
The variant is the config argument (":incorrect") because it also picks the objective;
`--config.traces.corrupt_step=classification --config.traces.corrupt_rate=0.5` tune the others.

metrics.json gets a "traces" block from the test split: answer and trace accuracy, per-step
accuracy, the trace-correct x answer-correct table, P(answer ok | trace ok / wrong) and phi.
Other data: --config.data.source=cotemp|msmarco with --config.data.path=DIR (local files) or
the hub (network); their traces are "relation|type: ... ; facts|passages: ...".

Sized for two shared CPU cores: about 6 minutes a run (t5-tiny, 400 steps of 16 packed rows).
The student is small and learns from scratch, so neither its traces nor its answers are near
perfect, which is what the trace x answer statistics need to say anything.
"""

import ml_collections

from configs import base
from jaxdistill import traces
from jaxdistill.data.sources import babi


def get_config(variant: str = "correct"):
  config = base.get_config()
  config.data.source = "babi"
  config.data.task = "babi"
  # num_train / num_dev / num_test, min_facts / max_facts (story length in facts, distractors
  # included), kinds: the generator's own defaults, so the two cannot disagree.
  config.data.babi = ml_collections.ConfigDict(babi.DEFAULTS)
  config.data.max_source_len = 128
  config.data.max_target_len = 32  # "type: three-facts ; facts: 1 2 4" is ~20 tokens

  config.traces = ml_collections.ConfigDict()
  config.traces.variant = variant
  config.traces.corrupt_step = "retrieval"  # a step name, a kind (classification | retrieval) or "any"
  config.traces.corrupt_rate = 1.0  # fraction of training examples whose trace is corrupted
  config.traces.seed = 0  # which examples are corrupted, and how

  # Measured on the shared 2-core CPU (README): ~6 min a run; t5-mini learns no faster per minute there.
  config.model.preset = "t5-tiny"
  config.train.steps = 400
  config.train.batch_size = 16
  config.train.warmup_steps = 40
  config.eval.every = 200
  traces.configure(config, variant)  # objective.name / format and config.name from the variant
  return config

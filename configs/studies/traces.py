"""Do correct traces give correct answers? The trace experiment's four variants (no trace, gold traces,
a corrupted retrieval step, gold + corrupted) on the built-in bAbI-style data, 3 seeds; the report
adds answer / trace / step accuracy, P(answer ok | trace ok / wrong) and phi of trace x answer
correctness per seed with t intervals (from the per-run trace blocks in metrics.json).

  python -m jaxdistill.study --config=configs/studies/traces.py [--workdir=runs/studies/traces]

Reference: `none` (answer only). Reduced budget for a 2-core CPU: t5-tiny, 200 steps of 16 packed rows
on 2,000 stories (12 runs; measured: 64 min on this 2-core machine while four other jobs shared it).
On one GPU: --config.base.train.steps=2000 --config.base.model.preset=t5-small.
"""

import ml_collections

from configs import traces as traces_config
from jaxdistill import traces


def get_config():
  base = traces_config.get_config()
  base.train.update(steps=200, checkpoint_every=100)
  base.eval.update(every=100)

  study = ml_collections.ConfigDict()
  study.name = "traces"
  study.base = base
  study.variants = ml_collections.ConfigDict({
      variant: {"traces": {"variant": variant}, "objective": {"name": name, "format": fmt}}
      for variant, (name, fmt) in traces.VARIANT_OBJECTIVES.items()})
  study.seeds = (0, 1, 2)
  study.reference = "none"
  study.hypothesis_only = False
  study.bootstrap_resamples = 2000
  return study

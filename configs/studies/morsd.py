"""Do low-difficulty rationales help? MoRSD's keep-k strategies on the same scored pool: all rationales,
a random k, the k lowest-RD and the k highest-RD per example (configs/morsd.py's data, readers and
student), 3 seeds. The pool is scored once for the study (WORKDIR/selection: the cross-fitted warm-up
readers and every candidate's RD); each run writes its own selection from those scores.

  python -m jaxdistill.study --config=configs/studies/morsd.py [--workdir=runs/studies/morsd]

Reference: `all`. The paper's setting: no accuracy filter (RD has to find the wrong rationales itself)
and chain of thought (`objective.format=rationale_answer`: the student writes its rationale, then its
answer, so what it was taught to argue shows in its answers). With the accuracy filter on, the demo's
correct rationales of an example are one text after the diversity filter, every strategy keeps the
same 1,144 and the study has nothing to compare (measured). Reduced budget for a 2-core CPU: t5-tiny,
100 steps, 300 dev / test examples: 12 runs plus the scoring, measured 17.6 min with another job sharing
the CPU. On one GPU:
--config.base.model.preset=t5-small --config.base.train.steps=2000.
"""

import ml_collections

from configs import morsd as morsd_config


def get_config():
  base = morsd_config.get_config()
  base.data.max_eval_examples = 300
  base.select.accuracy = False
  base.objective.format = "rationale_answer"
  base.train.steps = 100

  study = ml_collections.ConfigDict()
  study.name = "morsd"
  study.base = base
  study.variants = ml_collections.ConfigDict(
      {strategy: {"select": {"strategy": strategy}} for strategy in ("all", "random", "lowest", "highest")})
  study.seeds = (0, 1, 2)
  study.reference = "all"
  study.hypothesis_only = False
  study.bootstrap_resamples = 2000
  # what each run's selection kept (its selection/selection.json) beside the accuracy tables
  study.metrics = (("kept", "selection/selection.json:counts.kept"),
                   ("kept: teacher correct", "selection/selection.json:kept_teacher_correct"),
                   ("kept: mean RD", "selection/selection.json:kept_mean_rd"),
                   ("test rationale ppl", "test_rationale_perplexity"))
  return study

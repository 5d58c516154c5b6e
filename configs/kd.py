"""Teacher-logit distillation (methods/kd.py): the cot objective plus a top-k KL term to the teacher's
cached next-token distributions on the rationale tokens.

The student must share the teacher's tokenizer. With a local JAX teacher in TEACHER (a Hugging Face
directory), on the embedded demo task:

  python -m jaxdistill.teach --config=configs/teach.py --config.teacher.checkpoint=TEACHER \\
    --config.teacher.samples=4 --config.teacher.top_logprobs=5
  python -m jaxdistill.main --config=configs/kd.py --config.model.tokenizer=TEACHER --workdir=runs/kd

`kd.weight` weighs the KL term against the objective's (alpha * label + (1 - alpha) * rationale);
`kd.temperature` softens both distributions (the term is scaled by T^2).
"""

import ml_collections

from configs import cot


def get_config():
  config = cot.get_config()
  config.name = "kd"
  config.data.cache_dir = "caches/teacher"  # what configs/teach.py writes
  config.kd = kd = ml_collections.ConfigDict()
  kd.weight = 0.5
  kd.temperature = 1.0
  # Refuse a run where fewer of the teacher-rationale tokens get a teacher distribution (KD that
  # quietly touches no token would read as "KD does not help").
  kd.min_token_fraction = 0.5
  return config

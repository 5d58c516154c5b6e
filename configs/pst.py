"""Post-Semantic-Thinking: the answer first, then the rationale, and the rationale learned in the
hidden semantic space (the student's pooled rationale states, through a learned projection,
pulled toward the frozen all-MiniLM-L6-v2 embedding of the teacher's rationale).

At inference the student stops after the answer; `eval.measure_decode` times that against
decoding the whole rationale on the same test set (metrics.json "decode").
Variants: --config.objective.rationale_loss=token|semantic|both,
--config.objective.format=rationale_answer (rationale first), --config.objective.semantic.distance=mse.
The comparison of all of them, with seeds: `python -m jaxdistill.study --config=configs/studies/pst.py`.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.name = "pst"
  config.objective.name = "cot"
  config.objective.format = "answer_rationale"
  config.objective.rationale_loss = "semantic"
  config.eval.measure_decode = True
  return config

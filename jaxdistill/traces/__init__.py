"""Trace-based distillation: rule-based decomposition into checkable steps (README: "Trace-based distillation").

The study this serves decomposes open-book QA into a classification step (which kind of question
or relation is asked), an information-retrieval step (which facts or passages answer it) and the
answer. Every step has a gold value, so a student's generated trace can be checked step by step,
even at inference time, and one can ask whether correct traces go with correct answers. Its
finding: they do not reliably (SFT on deliberately incorrect traces can score higher, and trace
correctness correlates weakly with answer correctness). This package makes that experiment a config.

Modules, one job each; all but experiment.py and scoring.py are pure functions of their inputs:

  steps.py        Step, its kinds, trace text <-> steps (format_trace / parse_trace), numbered items
  verify.py       is a step right: exact label, set of 1-based indices, normalised answer text
  stats.py        the trace x answer 2x2 table, P(answer ok | trace ok / wrong), phi, step accuracy
  decomposers.py  Decomposer (a task's steps, gold values, wrong values) and the registry the
                  trace data sources (data/sources/babi, cotemp, msmarco) register into on import
  corruption.py   one non-answer step made plausibly wrong, the answer kept gold
  scoring.py      generated text -> the "traces" block of an evaluation (Scorer)
  experiment.py   `setup(config, dataset)`: the variant's training traces and the scorer

Imports go one way: data/sources -> traces.decomposers; nothing here imports a data source.
Gold traces travel as teacher rationales (teacher "rule", prompt_id "<task>-trace",
teacher_correct=True, raw = the whole trace with its answer), so caches can hold them.
"""

from jaxdistill.traces.corruption import corrupt
from jaxdistill.traces.decomposers import DECOMPOSERS, TEACHER, Decomposer, decomposer_for, register, trace_rationale
from jaxdistill.traces.experiment import (CORRUPTED_SUFFIX, VARIANT_OBJECTIVES, VARIANTS, configure, setup,
                                          training_rationales)
from jaxdistill.traces.scoring import Scorer, score
from jaxdistill.traces.stats import TABLE_KEYS, contingency, correlation_block, p_answer_given_trace, phi, step_accuracy
from jaxdistill.traces.steps import (ANSWER, ANSWER_FIELD, CLASSIFICATION, FIELD_SEP, KINDS, NO_ITEMS, RETRIEVAL, Step,
                                     Value, count_items, format_trace, format_value, number_items, parse_trace)
from jaxdistill.traces.verify import normalize_answer, verify

__all__ = [
    "ANSWER", "ANSWER_FIELD", "CLASSIFICATION", "CORRUPTED_SUFFIX", "DECOMPOSERS", "FIELD_SEP", "KINDS", "NO_ITEMS",
    "RETRIEVAL", "TABLE_KEYS", "TEACHER", "VARIANTS", "VARIANT_OBJECTIVES", "Decomposer", "Scorer", "Step", "Value",
    "configure", "contingency", "correlation_block", "corrupt", "count_items", "decomposer_for", "format_trace",
    "format_value", "normalize_answer", "number_items", "p_answer_given_trace", "parse_trace", "phi", "register",
    "score", "setup", "step_accuracy", "trace_rationale", "training_rationales", "verify",
]

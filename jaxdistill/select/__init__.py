"""`python -m jaxdistill.select --config=configs/morsd.py`: MoRSD rationale selection (cache -> cache).

Model-Oriented Rationale Selection keeps, out of several teacher rationales per training
example, those that are right, not redundant, and useful to *this* student:

  candidates   the train split's rationales (+ its human explanations with include_human)
  accuracy     keep teacher_correct ones                               (select.accuracy)
  diversity    drop a rationale whose similarity to an already kept one of the same example
               is above select.threshold: Jaccard of word n-gram sets, or cosine of MiniLM
               sentence embeddings                                      (select.diversity)
  difficulty   RD = PPL(gold | question + rationale) / PPL(gold | question) under a scoring
               student; RD < 1 means the rationale makes the answer easier to produce
  keep k       the k lowest-RD (or highest-RD, a seeded random k, or all) per example

The result is a NEW rationale cache at select.out_dir: every example of every split, the kept
train rationales with score columns `rd`, `nll_with`, `nll_without`, and the dev/test rationales
unchanged (so dev/test rationale perplexity still works); plus `selection.json`,
`selection_report.md` and `rd_hist.png` beside it. `configs/morsd.py` trains on it because its
data.cache_dir is the same FieldReference as select.out_dir.

Scoring. "question alone" is `formats.label_record(ex)`; "question + rationale" is the label
record of the same example with one more input field, `rationale`. A record's NLL is the mean
token cross-entropy over the gold answer's tokens (EOS included). Records are batched one per row
(`pipeline.make_eval_batches`), placed as global arrays over the mesh and scored by one jitted
function; decoder-only students read them through `pipeline.batch_view`. The scorer is either an
existing run (select.scorer.workdir: its exported WORKDIR/hf and tokenizer) or, by default,
warm-up "readers" cross-fitted over select.scorer.folds: fold f's reader is trained on the other
folds' examples (plain and with each candidate rationale as input, labelled as below) and scores fold
f's candidates, so no rationale is scored by a model that saw its example. A randomly initialised
student cannot read, so some reader is needed; cross-fitting keeps it honest.

What a reader learns decides what RD can see. With gold labels on every record
(select.scorer.reader_target="gold") a reader that can answer from the question alone learns to
ignore rationales, wrong ones included, and RD flattens to ~1: on the embedded demo (solvable from
premise and hypothesis) gold readers reached 0.99 dev accuracy and their lowest-RD rationale was
the correct one in 48% of the examples that had a correct and a wrong candidate, i.e. chance.
reader_target="teacher" (the default) labels each rationale record with the answer that rationale argues for
(its teacher_answer; no gold correctness is used), so the reader learns to follow rationales, as a
pretrained student reading its input would, and a rationale arguing for a wrong answer raises the
gold answer's perplexity: on the same pool the lowest-RD rationale was the correct one in all 850
such examples (mean log RD -0.08 for correct, +3.67 for wrong rationales). With the accuracy filter
on, every candidate's teacher answer is the gold label and the two targets train the same reader.

Resumable: readers are ordinary runs under out_dir/scorer-F (skipped once metrics.json exists),
and every scored record's NLL is kept in out_dir/scores/<scorer> (Parquet shards keyed by the
record's text, written per chunk), so a killed run continues where it stopped and a re-selection
with another strategy or k re-scores nothing.

Modules, one job each (stages.py is pure; the others read or write files or run models):

  stages.py     candidates, the accuracy and diversity filters, keep-k, the cache-row key
  scoring.py    RD: the two label records, Scorer / load_scorer, record NLLs, ScoreStore
  readers.py    warm-up readers: folds, their training rows and run config, training one
  report.py     rd_summary, rd_histogram and selection.json / selection_report.md
  selection.py  run(config): the stages in order, score_candidates, write_cache (the new cache,
                built beside out_dir and swapped in through RationaleCache.replace_with)
  __main__.py   `python -m jaxdistill.select` (flags -> run)
"""

from jaxdistill.select.readers import READER_TARGETS, fold_of, reader_config, reader_rows, train_reader
from jaxdistill.select.report import RD_HIST, REPORT_JSON, REPORT_MD, rd_histogram, rd_summary, write_report
from jaxdistill.select.scoring import (RATIONALE_FIELD, SCORE_COLUMNS, Scorer, ScoreStore, fingerprint, load_scorer,
                                       rationale_difficulty, rd_records, record_key, record_nll, scorer_tokenizer,
                                       with_rationale)
from jaxdistill.select.selection import Selection, check_config, load_pool, run, score_candidates, write_cache
from jaxdistill.select.stages import (DIVERSITY, HUMAN, STRATEGIES, Candidates, Key, accuracy_filter, candidates, count,
                                      diversity_filter, human_candidates, jaccard, keep_k, key_of, ngrams)

__all__ = [
    "DIVERSITY", "HUMAN", "RATIONALE_FIELD", "RD_HIST", "READER_TARGETS", "REPORT_JSON", "REPORT_MD", "SCORE_COLUMNS",
    "STRATEGIES", "Candidates", "Key", "ScoreStore", "Scorer", "Selection", "accuracy_filter", "candidates",
    "check_config", "count", "diversity_filter", "fingerprint", "fold_of", "human_candidates", "jaccard", "keep_k",
    "key_of", "load_pool", "load_scorer", "ngrams", "rationale_difficulty", "rd_histogram", "rd_records", "rd_summary",
    "reader_config", "reader_rows", "record_key", "record_nll", "run", "score_candidates", "scorer_tokenizer",
    "train_reader", "with_rationale", "write_cache", "write_report",
]

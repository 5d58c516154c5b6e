"""Studies: several variants (settings) x several seeds, compared with honest uncertainty. The
upcoming `python -m jaxdistill.study` runs the grid and reports, per variant and split, accuracy
over seeds (Student-t interval) and over examples (bootstrap), paired comparisons between variants
(paired bootstrap, exact McNemar, Holm-corrected), accuracy on "complex sample" subsets of NLI
pairs (lexical overlap, negation, length) and leakage-adjusted simulatability of rationales; the
statistics are the pure functions of stats.py, fed from each run's predictions.jsonl rows.
"""

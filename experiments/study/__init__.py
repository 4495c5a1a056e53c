"""Studies: the paper's claims reproduced at small scale over seeds, one command each.

``python -m experiments.study --study=NAME --outdir=DIR`` (see ``__main__``). Modules:
``stats`` (mean/std, steps to a threshold, paired effects and verdicts), ``runner``
(variants x seeds, resumable), ``evals`` (final NLL, Markov gap, sample quality),
``report`` (summary.csv, plots, REPORT.md) and one module per study.
"""

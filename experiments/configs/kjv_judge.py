"""Causal transformer judge (and AR teacher) on the bundled corpus.

  python -m experiments.train --config=experiments/configs/kjv_judge.py \
      --workdir=workdirs/kjv_judge

Same architecture and sequence length as ``kjv_tiny`` (so it scores kjv_tiny's samples
at their own length), trained on 16 x 64 characters for 3,000 steps: 2.06 bits/char
(exact NLL) in 3.0 minutes (measured 2026-11-26 on the 2-core CPU machine at commit
885916b), against kjv_tiny's 2.54 bits/char bound after 10,000 steps (2026-11-25, same
machine, commit 4269074). A judge should be clearly better than the models it scores.
"""

from experiments.configs import kjv_tiny


def get_config():
  c = kjv_tiny.get_config()
  c.model.arch = "causal"
  c.train.batch_size = 16
  c.train.num_steps = 3_000
  c.train.eval_every = 1_000
  c.train.checkpoint_every = 1_000
  c.train.log_every = 250
  return c

"""Causal transformer judge (and AR teacher) on the bundled corpus.

  python -m experiments.train --config=experiments/configs/kjv_judge.py \
      --workdir=workdirs/kjv_judge
"""

from experiments.configs import kjv_tiny


def get_config():
  c = kjv_tiny.get_config()
  c.model.arch = "causal"
  c.train.num_steps = 800
  return c

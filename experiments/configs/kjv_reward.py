"""Reward fine-tuning of the kjv_tiny model toward New-Testament-like text.

  python -m experiments.finetune --config=experiments/configs/kjv_reward.py \
      --workdir=workdirs/kjv_reward --config.finetune.ref_workdir=workdirs/kjv_tiny

The reward is the log-odds of a project-trained Old/New Testament classifier; the
target is p_ref exp(r / beta).
"""

from experiments.configs import kjv_tiny


def get_config():
  c = kjv_tiny.get_config()
  c.finetune.kind = "reward"
  c.finetune.beta = 0.3
  c.finetune.reward = "classifier"
  c.finetune.reward_mode = "taylor"
  c.loss.form = "score"
  c.loss.divergence = "gkl"
  c.loss.weighting = "constant"
  c.train.num_steps = 200
  c.train.eval_every = 200
  c.train.checkpoint_every = 100
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 20
  return c

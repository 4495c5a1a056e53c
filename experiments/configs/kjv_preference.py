"""Preference (DPO-style) fine-tuning from reward-ranked pairs of reference samples.

  python -m experiments.finetune --config=experiments/configs/kjv_preference.py \
      --workdir=workdirs/kjv_pref --config.finetune.ref_workdir=workdirs/kjv_tiny
"""

from experiments.configs import kjv_reward


def get_config():
  c = kjv_reward.get_config()
  c.finetune.kind = "preference"
  c.finetune.beta = 0.1
  c.finetune.num_pairs = 256
  return c

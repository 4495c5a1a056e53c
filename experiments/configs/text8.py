"""text8 at character level, SEDD/MD4-sized (GPT-2 small), for accelerators.

Needs a local copy: ``--config.data.path=/path/to/text8.zip``.
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "text8"
  c.data.seq_len = 256
  c.model.size = "gpt2_small"
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.log_every = 500
  c.train.eval_every = 10_000
  c.train.eval_batches = 16
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2_500
  c.optim.lr_schedule = "cosine"
  c.eval.batch_size = 256
  return c

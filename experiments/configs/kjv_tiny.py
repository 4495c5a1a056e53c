"""Default job: a tiny TCSM model on the bundled KJV corpus (minutes on 2 CPU cores)."""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "bundled"
  c.data.seq_len = 128
  c.model.size = "tiny"
  c.train.batch_size = 32
  c.train.num_steps = 600
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.eval_batches = 4
  c.train.checkpoint_every = 200
  # TCSM distribution form with KL: the variant that learns fastest here (README).
  c.loss.form = "distribution"
  c.loss.divergence = "kl"
  c.optim.lr = 1e-3
  c.train.ema_decay = 0.99
  c.optim.warmup_steps = 50
  c.eval.num_batches = 8
  return c

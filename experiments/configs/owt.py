"""OpenWebText with a project-trained sentencepiece model, packed 1024-token sequences.

Needs the tfds dataset prepared locally (``--config.data.tfds_dir``); nothing is
downloaded at run time.
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "wordpiece"
  c.data.tfds_name = "openwebtext"
  c.data.seq_len = 1024
  c.data.spm_vocab_size = 32768
  c.model.size = "gpt2_small"
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.log_every = 500
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.optim.warmup_steps = 2_500
  c.eval.batch_size = 64
  return c

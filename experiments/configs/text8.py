r"""text8 at character level, GPT-2-small sized, for accelerators.

Reproduces: text8 bits per character (test split, NLL upper bound):
  MD4 (Shi et al. 2024) <= 1.37, SEDD absorbing (Lou et al. 2024) <= 1.39,
  TCSM paper (Zhang et al. 2025) <= 1.25 (with a parametric target).
Hyper-parameters follow MD4's text8 config: 256-character chunks, batch 512,
1M steps, AdamW lr 3e-4 with 2k linear warmup then cosine decay, b2 0.999, EMA 0.9999,
a 12 x 768 transformer (GPT-2 small), masked (absorbing) diffusion, log-linear schedule.
Cost of one step: not measured at this config's shape (256 characters, batch 512).
The same GPT-2-small model on 27 tokens takes 54.0 ms per bf16 step of 32 x 1024 tokens
on one NVIDIA H200 (607k tokens/s, 38% MFU; measured 2026-11-26 at commit 013cb0a,
experiments/results/gpu_h200.txt) and 3.8 s per float32 step of 8 x 128 tokens on the
2-core CPU machine (2026-11-25, commit 3e9897b, experiments/results/train_step_cpu.txt).
Run the benchmark on the target hardware first:
  python -m experiments.benchmarks.train_step --sizes=gpt2_small --seq_len=256 \
      --batch=64 --dtype=bfloat16

Prepare once, then train (paths may be bucket URLs):
  python -m experiments.prepare_data --source=text8:/data/text8.zip --tokenizer=char \
      --out=/data/text8_prepared
  python -m experiments.train --config=experiments/configs/text8.py \
      --workdir=/runs/text8 --config.data.path=/data/text8_prepared
``data.name=text8`` with ``data.path=text8.zip`` also works (reads the zip into memory).
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "prepared"
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
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 2_000
  c.optim.lr_schedule = "cosine"
  c.eval.batch_size = 256
  return c

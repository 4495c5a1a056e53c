r"""OpenWebText with GPT-2 BPE tokens, packed 1024-token sequences, for accelerators.

Reproduces: OpenWebText perplexity (NLL upper bound, GPT-2 tokens, held-out split):
  MD4 <= 22.1, MDLM (Sahoo et al. 2024) <= 23.2, SEDD absorbing <= 24.1.
Hyper-parameters follow MDLM/SEDD: GPT-2 tokenizer (50257 tokens), documents joined by
EOS and wrapped into 1024-token rows ("wrap"), batch 512, 1M steps, AdamW lr 3e-4,
2.5k warmup, b2 0.999, EMA 0.9999, a 12 x 768 transformer, dropout 0.1, absorbing
process, log-linear schedule; the last 100k documents are held out for validation.
Cost of one step: not measured with this config's 50,257-token vocabulary. The same
12 x 768 transformer on a 27-token vocabulary takes 54.0 ms per bf16 step of 32 x 1024
tokens on one NVIDIA H200 (607k tokens/s, 38% MFU; measured 2026-11-26 at commit
013cb0a, experiments/results/gpu_h200.txt); the GPT-2 output layer adds to that.
Measure it with
  python -m experiments.benchmarks.train_step --sizes=gpt2_small --seq_len=1024 \
      --batch=16 --dtype=bfloat16

Prepare once (tfds openwebtext prepared locally, GPT-2's tokenizer.json on disk; nothing
is downloaded), then train:
  python -m experiments.prepare_data --source=tfds:openwebtext \
      --tfds_dir=/data/tfds --tokenizer=hf:/data/gpt2/tokenizer.json --out=/data/owt_gpt2
  python -m experiments.train --config=experiments/configs/owt.py \
      --workdir=gs://BUCKET/owt --config.data.path=/data/owt_gpt2
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "prepared"
  c.data.layout = "packed"
  c.data.seq_len = 1024
  c.model.size = "gpt2_small"
  c.model.dtype = "bfloat16"
  c.model.dropout = 0.1
  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.log_every = 500
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 5_000
  c.train.ema_decay = 0.9999
  c.optim.lr = 3e-4
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 2_500
  c.eval.batch_size = 64
  return c

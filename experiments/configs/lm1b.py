r"""LM1B with bert-base-uncased WordPiece tokens, one sentence per 128-token row.

Reproduces: LM1B perplexity (NLL upper bound, BERT tokens, test split): MDLM and SEDD
about 33 (MDLM reports 27-33 depending on training length and packing).
Hyper-parameters follow MDLM's LM1B setup: bert-base-uncased tokenizer (30522 tokens),
sequences of 128 tokens, one sentence per row padded (padding excluded from the loss
and the NLL bound: ``data.layout=padded``), batch 512, 1M steps, AdamW lr 3e-4, 2.5k
warmup, EMA 0.9999, a 12 x 768 transformer, dropout 0.1, absorbing process.
Cost of one step: not measured on an accelerator yet; measure it with
  python -m experiments.benchmarks.train_step --sizes=gpt2_small --seq_len=128 \
      --batch=64 --dtype=bfloat16

Prepare once (tfds lm1b prepared locally, bert-base-uncased's tokenizer.json on disk):
  python -m experiments.prepare_data --source=tfds:lm1b --tfds_dir=/data/tfds \
      --tokenizer=hf:/data/bert-base-uncased/tokenizer.json --layout=padded \
      --seq_len=128 --out=/data/lm1b_bert
  python -m experiments.train --config=experiments/configs/lm1b.py \
      --workdir=/runs/lm1b --config.data.path=/data/lm1b_bert
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "prepared"
  c.data.layout = "padded"
  c.data.seq_len = 128
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
  c.eval.batch_size = 256
  return c

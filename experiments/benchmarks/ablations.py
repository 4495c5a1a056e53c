r"""Train-step ablations and the MFU table, one change from a base per row (GPU script).

  python -m experiments.benchmarks.ablations [--sizes=gpt2_small] [--batch=32] \
      [--seq_len=1024] [--vocab=50257] [--steps=20] [--ablations=all] [--out=FILE]

Base: bf16 activations, scanned layers, no remat, ``attention_impl=auto`` (cuDNN on a
GPU), the TCSM score form, the loss in one piece (``loss.chunk_size=0``). Each other
row changes one thing (``ABLATIONS``): float32, unrolled layers, a remat policy, the
chunked loss, the chunked loss with vocabulary tiling, XLA attention, cuDNN attention
(explicitly), half and double the batch. Per row (``train_step.measure``): compile
seconds, step ms, tokens/s, model TFLOP/s per device, MFU (where the device's peak is
known: H100/H200/A100/TPU), peak memory. A row that cannot run here (cuDNN off a GPU,
out of memory) prints why and the table goes on.

The same script runs on the CPU with a tiny config in the default tests
(``tests/test_ablations.py``), so it cannot rot between GPU sessions:

  python -m experiments.benchmarks.ablations --sizes=tiny --batch=4 --seq_len=64 \
      --vocab=64 --steps=1 --dtype=float32
"""

import copy

import jax
from absl import app, flags
from etils import epath

from experiments.benchmarks import train_step
from experiments.configs import base

# --sizes, --batch, --seq_len, --steps, --dtype are train_step's flags (same meaning).
_ABL = flags.DEFINE_list("ablations", ["all"], "Rows to run (ABLATIONS names), or all.")
_VOCAB = flags.DEFINE_integer("vocab", 50257, "Vocabulary (random tokens).")
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "loss.chunk_size of the chunked rows.")
_OUT = flags.DEFINE_string("out", "", "Also write the table here.")

# name: config overrides from the base (dotted keys); "batch" scales train.batch_size.
ABLATIONS = {
    "base": {},
    "float32": {"model.dtype": "float32"},
    "no_scan": {"model.scan_layers": False},
    "remat_nothing": {"model.remat": True, "model.remat_policy": "nothing_saveable"},
    "remat_dots": {"model.remat": True, "model.remat_policy": "dots_saveable"},
    "remat_dots_no_batch": {"model.remat": True,
                            "model.remat_policy": "dots_with_no_batch_dims_saveable"},
    "chunked_loss": {"loss.chunk_size": "CHUNK"},
    "chunked_tiled": {"loss.chunk_size": "CHUNK", "loss.tile_vocab": True},
    "attention_xla": {"model.attention_impl": "xla"},
    "attention_cudnn": {"model.attention_impl": "cudnn"},
    "batch_half": {"batch": 0.5},
    "batch_double": {"batch": 2.0},
}


def row_config(size: str, name: str, batch: int, seq: int, dtype: str):
  """The config of one ablation row (base + ``ABLATIONS[name]``)."""
  config = base.get_config()
  config.model.size = size
  config.model.dtype = dtype
  config.model.scan_layers = True
  config.model.remat = False
  config.model.attention_impl = "auto"
  config.loss.kind, config.loss.form, config.loss.divergence = "tcsm", "score", "gkl"
  config.loss.chunk_size = 0
  config.data.seq_len = seq
  config.train.batch_size = batch
  for key, val in ABLATIONS[name].items():
    if key == "batch":
      config.train.batch_size = max(1, int(batch * val))
      continue
    if val == "CHUNK":
      val = _CHUNK.value
    section, leaf = key.split(".")
    config[section][leaf] = copy.deepcopy(val)
  return config


def main(_):
  names = list(ABLATIONS) if _ABL.value == ["all"] else _ABL.value
  for n in names:
    if n not in ABLATIONS:
      raise app.UsageError(f"--ablations: unknown row {n!r}; one of {sorted(ABLATIONS)}")
  kind = jax.devices()[0].device_kind
  dtype = train_step._DTYPE.value  # pylint: disable=protected-access
  batch = train_step._BATCH.value  # pylint: disable=protected-access
  seq = train_step._SEQ.value  # pylint: disable=protected-access
  steps = train_step._STEPS.value  # pylint: disable=protected-access
  lines = [f"device: {kind} x{jax.device_count()} | jax {jax.__version__} | base: {dtype},"
           f" scan, no remat, attention auto, TCSM score, loss in one piece | batch "
           f"{batch} x {seq} tokens | V {_VOCAB.value} | {steps} timed steps"]
  head = (f"{'size':<11}{'row':<21}{'batch':>6}{'compile s':>10}{'step ms':>10}"
          f"{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}  mem source")
  lines += [head, "-" * len(head)]
  for line in lines:
    print(line, flush=True)
  for size in train_step._SIZES.value:  # pylint: disable=protected-access
    for name in names:
      cfg = row_config(size, name, batch, seq, dtype)
      try:
        r = train_step.measure(cfg, steps, _VOCAB.value)
      except Exception as e:  # pylint: disable=broad-except
        msg = (str(e).splitlines() or [type(e).__name__])[0][:120]
        line = f"{size:<11}{name:<21}{cfg.train.batch_size:>6}  not run: {msg}"
      else:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        line = (f"{size:<11}{name:<21}{cfg.train.batch_size:>6}{r['compile_s']:>10.1f}"
                f"{r['step_ms']:>10.1f}{r['tok_s']:>11,.0f}{r['tflops']:>9.3f}{mfu:>7}"
                f"{r['mem_gib']:>10.3f}  {r['mem_src']}")
      print(line, flush=True)
      lines.append(line)
  if _OUT.value:
    epath.Path(_OUT.value).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)

r"""XLA's FLOP and byte counts of the GPT-2-small train step for the ablations of issue 21.

  python -m experiments.benchmarks.train_step_cost [--size=gpt2_small] [--batch=32]
      [--seq_len=1024] [--vocab=50257] [--variants=base,bf16,...]

Without an accelerator at hand, each candidate change that the model config already
supports is compiled alone (one device, abstract shapes: nothing allocated, nothing
run) and XLA's ``compiled.cost_analysis()`` (FLOPs, transcendentals, bytes accessed) and
``compiled.memory_analysis()`` (temp and peak bytes) are printed next to the baseline.
These are XLA:CPU's counts: the same HLO ops a GPU runs, not its kernels (no cuDNN
attention, bf16 converted to float32 on the CPU), so they show what a change does to the
work and the live memory, not its speed. The step is the trainer's
(``tcsm_jax.training.step.make_train_step``), TCSM score form, AdamW + EMA.

Variants (each one change from ``base``: float32, unrolled layers, no remat,
``attention_impl=xla``, ``loss.chunk_size=0``):
``bf16`` (model.dtype=bfloat16), ``scan`` (model.scan_layers), ``remat_full``
(remat, nothing_saveable), ``remat_dots`` (remat, dots_with_no_batch_dims_saveable),
``chunk`` (loss.chunk_size=1024), ``bf16_remat_dots_chunk`` (the three together).
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments.benchmarks import mfu
from experiments.benchmarks import scale_plan

_SIZE = flags.DEFINE_string("size", "gpt2_small", "Model size.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size (one device).")
_SEQ = scale_plan._SEQ          # pylint: disable=protected-access  --seq_len (1024) and --vocab (50257), shared flags
_VOCAB = scale_plan._VOCAB      # pylint: disable=protected-access
_VARIANTS = flags.DEFINE_list(
    "variants", ["base", "bf16", "scan", "remat_full", "remat_dots", "chunk",
                 "bf16_remat_dots_chunk"], "Variants (module docstring).")

VARIANTS = {
    "base": {},
    "bf16": {"model.dtype": "bfloat16"},
    "scan": {"model.scan_layers": True},
    "remat_full": {"model.remat": True, "model.remat_policy": "nothing_saveable"},
    "remat_dots": {"model.remat": True,
                   "model.remat_policy": "dots_with_no_batch_dims_saveable"},
    "chunk": {"loss.chunk_size": 1024},
    "bf16_remat_dots_chunk": {"model.dtype": "bfloat16", "model.remat": True,
                              "model.remat_policy": "dots_with_no_batch_dims_saveable",
                              "loss.chunk_size": 1024},
}
GIB = 2 ** 30


def variant_config(name: str):
  cfg = scale_plan.plan_config(_SIZE.value, _SEQ.value, "none", False, "float32")
  for key, value in VARIANTS[name].items():
    section, field = key.split(".")
    cfg[section][field] = value
  return cfg


def cost(name: str):
  cfg = variant_config(name)
  abstract, train_step = scale_plan.build(cfg, _VOCAB.value)
  batch = jax.ShapeDtypeStruct((_BATCH.value, _SEQ.value), jnp.int32)
  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(abstract, batch).compile()
  compile_s = time.perf_counter() - t0
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  ma = compiled.memory_analysis()
  peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
          - ma.alias_size_in_bytes)
  model_flops = mfu.train_flops_per_token(
      mfu.matmul_params(abstract.params), *scale_plan_dims(cfg), _SEQ.value) * (
          _BATCH.value * _SEQ.value)
  return dict(flops=ca.get("flops", float("nan")),
              transcendentals=ca.get("transcendentals", float("nan")),
              bytes=ca.get("bytes accessed", float("nan")), temp=ma.temp_size_in_bytes,
              peak=peak, model_flops=model_flops, compile_s=compile_s)


def scale_plan_dims(cfg):
  from tcsm_jax.models import transformer  # pylint: disable=g-import-not-at-top
  layers, width, _ = transformer.SIZES[cfg.model.size]
  return layers, width


def main(_):
  print(f"{_SIZE.value}, one CPU device, batch {_BATCH.value} x {_SEQ.value}, V "
        f"{_VOCAB.value}; XLA:CPU cost_analysis / memory_analysis of the train step")
  head = (f"{'variant':<24}{'XLA TFLOP':>10}{'model TFLOP':>12}{'XLA/model':>10}"
          f"{'transc. G':>10}{'GB accessed':>12}{'temp GiB':>9}{'peak GiB':>9}"
          f"{'compile s':>10}")
  print(head)
  print("-" * len(head))
  for name in _VARIANTS.value:
    r = cost(name)
    print(f"{name:<24}{r['flops'] / 1e12:>10.2f}{r['model_flops'] / 1e12:>12.2f}"
          f"{r['flops'] / r['model_flops']:>10.2f}{r['transcendentals'] / 1e9:>10.2f}"
          f"{r['bytes'] / 1e9:>12.1f}{r['temp'] / GIB:>9.2f}{r['peak'] / GIB:>9.2f}"
          f"{r['compile_s']:>10.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)

r"""Train-step throughput and memory for several model sizes and losses.

  python -m experiments.benchmarks.train_step [--sizes=tiny,small,gpt2_small]
      [--batch=16] [--seq_len=256] [--dtype=bfloat16] [--losses=tcsm_score,masked_elbo]

Prints one row per (size, loss): parameters, compile time, step time, steps/s, tokens/s,
achieved model TFLOP/s per device, model FLOPs utilisation and peak memory (device
allocator peak where the backend reports it -- a running maximum over the rows so far,
so order rows small to large -- else XLA's compiled-memory estimate).

MFU = model FLOPs per step / (step time x devices x peak FLOP/s of one device). Model
FLOPs per token are ``6 N + 12 layers width seq`` (``train_flops_per_token``), with ``N``
the parameters of the per-token matmuls (``matmul_params``: not the embedding lookup,
not the once-per-sequence noise conditioning). The peak comes from ``PEAK_FLOPS`` by
``device_kind`` and ``--dtype`` (H100/H200 SXM, PCIe and NVL, A100, TPU v4, v5e, v5p,
v6e); any other device (a CPU) prints ``n/a``.
"""

import time

import jax
import numpy as np
from absl import app, flags

from experiments.benchmarks.mfu import matmul_params, peak_flops, train_flops_per_token
from experiments.configs import base
from tcsm_jax import models, objective
from tcsm_jax.data import pipeline, text8
from tcsm_jax.training import optim, partition, state as state_lib, step as step_lib
from tcsm_jax.training import trainer

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small", "gpt2_small"], "Model sizes.")
_BATCH = flags.DEFINE_integer("batch", 16, "Global batch size.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Sequence length.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype.")
_LOSSES = flags.DEFINE_list("losses", ["tcsm_score", "tcsm_distribution", "masked_elbo"],
                            "Objectives to compare.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialize blocks.")
_SCAN = flags.DEFINE_bool("scan_layers", False, "lax.scan over layers.")
_ATTN = flags.DEFINE_string("attention_impl", "auto", "model.attention_impl: auto | xla | "
                            "cudnn (GPU, bfloat16) | einsum.")

LOSSES = {"tcsm_score": dict(kind="tcsm", form="score", divergence="gkl"),
          "tcsm_distribution": dict(kind="tcsm", form="distribution", divergence="kl"),
          "masked_elbo": dict(kind="masked_elbo")}

def bench(size, loss_name):
  config = base.get_config()
  config.model.size = size
  config.model.dtype = _DTYPE.value
  config.model.remat = _REMAT.value
  config.model.scan_layers = _SCAN.value
  config.model.attention_impl = _ATTN.value
  config.data.seq_len = _SEQ.value
  config.train.batch_size = _BATCH.value
  for k, v in LOSSES[loss_name].items():
    config.loss[k] = v
  return dict(measure(config, _STEPS.value), size=size, loss=loss_name)


def measure(config, steps: int, vocab: int = text8.VOCAB_SIZE):
  """Compiles and times the train step of ``config`` (``train.batch_size`` x
  ``data.seq_len`` random tokens of ``vocab`` symbols, all devices data parallel): a
  dict with ``params``,
  ``compile_s``, ``step_ms``, ``steps_s``, ``tok_s``, ``tflops`` (model FLOP/s per
  device), ``mfu`` (None where the peak is unknown), ``mem_gib`` and ``mem_src``."""
  seq, batch_size = config.data.seq_len, config.train.batch_size
  tokens = np.random.default_rng(0).integers(0, vocab, 200_000).astype(
      np.uint8 if vocab <= 256 else np.int32)
  ds = pipeline.TokenDataset(tokens, tokens[:10000], vocab, text8.decode, "rand")
  exp = trainer.build(config, ds)
  mesh = partition.make_mesh(1)
  optimizer, sched = optim.make_optimizer(config.optim, 1000)
  tile = bool(config.loss.get("tile_vocab", False))
  apply = lambda p, x, s, tr, k: exp.apply_fn(p, x, s, tr, k, hidden=tile)
  loss_fn = objective.make_loss_fn(config.loss, exp.process, exp.schedule, apply)
  create = lambda k: state_lib.create(exp.init_params(k), optimizer, k)
  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  sh = partition.state_shardings(abstract, mesh)
  bsh = partition.batch_sharding(mesh)
  state = jax.jit(create, out_shardings=sh)(jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_train_step(loss_fn, optimizer, sched, 0.999),
                 in_shardings=(sh, bsh), out_shardings=(sh, partition.replicated(mesh)),
                 donate_argnums=(0,))
  sampler = pipeline.ChunkSampler(tokens, seq, batch_size)
  batch = partition.to_global(sampler.batch(0), bsh)
  t_c = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t_c
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  n = models.count_params(state.params)
  tok_s = batch_size * seq / dt
  cfg = exp.model.cfg
  fl = train_flops_per_token(matmul_params(state.params), cfg.num_layers, cfg.width,
                             seq)
  pk = peak_flops(jax.devices()[0].device_kind, config.model.dtype,
                  jax.config.jax_default_matmul_precision)
  achieved = fl * tok_s / jax.device_count()              # model FLOP/s per device
  mfu = achieved / pk if pk else None
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    mem, src = stats["peak_bytes_in_use"], "allocator"
  else:
    ma = compiled.memory_analysis()
    mem = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
           - ma.alias_size_in_bytes) if ma is not None else float("nan")
    src = "xla-estimate"
  return dict(params=n, compile_s=compile_s,
              step_ms=dt * 1e3, steps_s=1 / dt,
              tok_s=tok_s, tflops=achieved / 1e12, mfu=mfu, mem_gib=mem / 2 ** 30,
              mem_src=src)


def main(_):
  kind = jax.devices()[0].device_kind
  pk = peak_flops(kind, _DTYPE.value, jax.config.jax_default_matmul_precision)
  print(f"device: {kind} x{jax.device_count()} | batch {_BATCH.value} x {_SEQ.value} "
        f"tokens | {_DTYPE.value} | attention {_ATTN.value} | peak "
        + (f"{pk / 1e12:.1f} TFLOP/s per device" if pk else "unknown (MFU n/a)"))
  head = (f"{'size':<11}{'loss':<19}{'params':>12}{'compile s':>10}{'step ms':>10}"
          f"{'steps/s':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}"
          "  mem source")
  print(head)
  print("-" * len(head))
  for size in _SIZES.value:
    for loss in _LOSSES.value:
      r = bench(size, loss)
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
      print(f"{r['size']:<11}{r['loss']:<19}{r['params']:>12,}{r['compile_s']:>10.1f}"
            f"{r['step_ms']:>10.1f}{r['steps_s']:>9.2f}{r['tok_s']:>11,.0f}"
            f"{r['tflops']:>9.3f}{mfu:>7}{r['mem_gib']:>10.3f}  {r['mem_src']}",
            flush=True)


if __name__ == "__main__":
  app.run(main)

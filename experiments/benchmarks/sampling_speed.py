r"""Sampler speed with random weights: samples/s and seconds per network call.

  python -m experiments.benchmarks.sampling_speed \
      [--settings=4x256:128:16:256,6x384:256:16:64] [--samplers=analytic,ancestral] \
      [--repeats=2]

A setting is ``LAYERSxWIDTH:TOKENS:BATCH:STEPS`` (heads = width / 64). The model is a
``DiffusionTransformer`` for the absorbing process over text8's 27 tokens with the
log-linear schedule, initialised and then perturbed (adaLN-Zero would otherwise make
every block the identity). No checkpoint or data is needed.

For every setting it prints one row for the bare forward pass (``forward``: one jitted
``apply`` on the full batch) and one per sampler with

* ``samples/s``: batch / wall time of one jitted ``sample`` call (compile excluded,
  best of ``--repeats``);
* ``NFE``: network calls (``info['nfe']``); ``rows``: full-batch equivalents of the
  rows the network saw (``info['nfe_rows'] / batch``; equals NFE when every call sees
  the whole batch);
* ``s/call``: wall time / NFE: the cost of one reverse step including the sampler's own
  arithmetic, to compare with the bare ``forward`` row;
* ``s/row-call``: wall time / rows: what one full-batch network evaluation costs inside
  the sampler;
* ``CPU s/call``: process CPU time (all threads) / NFE: steadier than wall time when
  other jobs share the machine;
* ``compile s``: lowering and compiling the sampler.

The machine is the one you run on; on a shared CPU, run it twice and believe the minimum.

Measured 2026-11-25 at commit 31d7953 (2-core CPU machine shared with other jobs, load
2 to 15, jax 0.10.2; random weights, batch 16). Before = the transformer and samplers
before ``model.attention_impl`` and the per-sequence cache; both versions interleaved in
one process (``CPU s/call`` is the comparable column; wall time followed the other
jobs' load, not the code):

  setting           version sampler      NFE   rows samples/s  s/call CPU s/call
  4x256:128:16:256  before  analytic     257  257.0     0.144   0.433      0.192
  4x256:128:16:256  before  ancestral    257  257.0     0.166   0.376      0.202
  4x256:128:16:256  after   analytic     257  257.0     0.223   0.279      0.179
  4x256:128:16:256  after   ancestral    257  133.2     0.687   0.091      0.091
  6x384:256:16:64   before  analytic      65   65.0     0.326   0.754      1.268
  6x384:256:16:64   before  ancestral     65   65.0     0.196   1.256      1.346
  6x384:256:16:64   after   analytic      65   65.0     0.197   1.251      1.245
  6x384:256:16:64   after   ancestral     65   65.0     0.193   1.277      1.263

At 128 tokens / 256 steps about 39% of the sequences change per step: the per-sequence
cache runs the network on 133 full-batch equivalents instead of 257 (half the CPU time,
2x samples/s at equal load); the old whole-batch cache never fired (257 calls). At 256
tokens / 64 steps ~98% change per step, so the cache steps aside (same program as
``analytic``). The bare forward pass costs 8-10% less CPU than before (head-major
attention on CPU, rotary tables as constants; interleaved A/B: 4x256 0.202 -> 0.181 s,
6x384 1.49 -> 1.36 s).
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from tcsm_jax import processes, sampling, schedules
from tcsm_jax.models import transformer

_SETTINGS = flags.DEFINE_list("settings", ["4x256:128:16:256", "6x384:256:16:64"],
                              "LAYERSxWIDTH:TOKENS:BATCH:STEPS settings.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", ["analytic", "ancestral", "ancestral@0/BATCH"],
    "Samplers; 'ancestral@0/8/16' sets the cache buckets (BATCH: the batch size). "
    "'ancestral@0/BATCH' is the whole-batch cache (skip only when no sequence changed).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per row (best is reported).")
_VOCAB = 27


def parse_setting(s):
  arch, tokens, batch, steps = s.split(":")
  layers, width = arch.split("x")
  return int(layers), int(width), int(tokens), int(batch), int(steps)


def random_model(layers, width, tokens, seed=0):
  """``(apply_fn, params)`` of a perturbed-init denoiser (random weights)."""
  cfg = transformer.TransformerConfig(
      vocab_size=_VOCAB, num_input_states=_VOCAB + 1, max_length=tokens,
      num_layers=layers, width=width, num_heads=max(1, width // 64))
  model = transformer.DiffusionTransformer(cfg)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, tokens), jnp.int32),
                      jnp.ones((1,)))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  apply_fn = lambda p, x, s: model.apply({"params": p}, x, s)
  return apply_fn, params


def _best(fn, repeats):
  """``(output, best wall seconds, best process CPU seconds)`` over ``repeats`` runs."""
  out, best, best_cpu = None, float("inf"), float("inf")
  for _ in range(repeats):
    c0, t0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
    best_cpu = min(best_cpu, time.process_time() - c0)
  return out, best, best_cpu


def bench_setting(setting, samplers, repeats):
  layers, width, tokens, batch, steps = parse_setting(setting)
  apply_fn, params = random_model(layers, width, tokens)
  proc, sched = processes.Absorbing(_VOCAB), schedules.get("log_linear")
  x = jnp.full((batch, tokens), proc.mask_id, jnp.int32)
  fwd = jax.jit(apply_fn)
  jax.block_until_ready(fwd(params, x, jnp.ones((batch,))))
  _, t_fwd, c_fwd = _best(lambda: fwd(params, x, jnp.ones((batch,))), max(3, repeats))
  rows = [dict(setting=setting, sampler="forward", steps=1, nfe=1, rows=1.0,
               samples_s=batch / t_fwd, s_call=t_fwd, s_row=t_fwd, cpu_call=c_fwd,
               compile_s=0.0)]
  for name in samplers:
    kw = {}
    name = name.replace("BATCH", str(batch))
    if "@" in name:                         # e.g. ancestral@0/16: explicit cache buckets
      kw["cache_buckets"] = tuple(int(c) for c in name.split("@")[1].split("/"))
    fn = sampling.jit_sampler(apply_fn, proc, sched, (batch, tokens), steps=steps,
                              sampler=name.split("@")[0], **kw)
    t_c = time.perf_counter()
    fn = fn.lower(params, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t_c
    (_, info), dt, cpu = _best(lambda: fn(params, jax.random.PRNGKey(1)), repeats)
    nfe = int(info["nfe"])
    full = float(info.get("nfe_rows", nfe * batch)) / batch
    rows.append(dict(setting=setting, sampler=name, steps=steps, nfe=nfe, rows=full,
                     samples_s=batch / dt, s_call=dt / nfe, s_row=dt / full,
                     cpu_call=cpu / nfe, compile_s=compile_s))
  return rows


HEAD = (f"{'setting':<18}{'sampler':<16}{'steps':>6}{'NFE':>6}{'rows':>8}"
        f"{'samples/s':>11}{'s/call':>9}{'s/row-call':>11}{'CPU s/call':>11}{'compile s':>11}")


def format_row(r):
  return (f"{r['setting']:<18}{r['sampler']:<16}{r['steps']:>6}{r['nfe']:>6}"
          f"{r['rows']:>8.1f}{r['samples_s']:>11.3f}{_g(r['s_call']):>9}{_g(r['s_row']):>11}"
          f"{_g(r['cpu_call']):>11}{r['compile_s']:>11.1f}")


def _g(seconds: float) -> str:
  """Seconds with 3 significant digits (GPU calls take well under a millisecond)."""
  return f"{seconds:.3f}" if seconds >= 0.01 else f"{seconds:.2e}"


def main(_):
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; random weights, "
        "absorbing process, log-linear schedule, float32")
  print(HEAD)
  print("-" * len(HEAD))
  for setting in _SETTINGS.value:
    for r in bench_setting(setting, _SAMPLERS.value, _REPEATS.value):
      print(format_row(r), flush=True)


if __name__ == "__main__":
  app.run(main)

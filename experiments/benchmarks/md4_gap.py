r"""Where the samples/s gap to MD4's sampler goes: sampler overhead against network cost.

  python -m experiments.benchmarks.md4_gap [--setting=6x384:256:16:32] [--repeats=3]  (--repeats: interleaved rounds)
      [--md4]

A setting is ``LAYERSxWIDTH:TOKENS:BATCH:STEPS`` (heads = width / 64), absorbing
process over text8's 27 tokens, random weights (``sampling_speed.random_model``).
Three tables, every row timed interleaved with the others (best of ``--repeats``):

1. ``null network``: the whole sampling loop with a stand-in denoiser
   (``logits = table[x_t]``), so a row is the sampler's own arithmetic per step:
   ``analytic`` with the exact draws and with ``gumbel32`` (``draws.py``).
2. ``forward``: one denoiser call at the setting's size, with XLA's FLOP count.
3. ``loops``: the ``analytic`` sampler with the real network, and with two
   *measurement-only* swaps that make the network another function: the MLP's GELU
   removed, and MD4's MLP (a sigmoid-gated GLU of hidden ``32 * ceil(8 * width / 96)``,
   ``md4/networks/transformer.py::FeedForward``, same FLOPs as the 4x GELU MLP) in place
   of the project's 4x GELU MLP (the MDLM / SEDD / DiT architecture).

With ``--md4`` each table gains MD4's own row (``md4/sampling.py::simple_generate``,
ancestral), which needs google-deepmind/md4 set up as ``../shared/tools/md4_side_by_side``
describes (``md4_shim`` importable); ratios are then to MD4's row. Without it, ratios are
to the project's default row, and the default test suite runs it at a tiny size.

Measured 2026-12-03 on the 2-core CPU at commit b770aba (jax 0.10.2), 6 x 384, 256
tokens, batch 16, 64 steps: 0.921x MD4's samples/s, 1.006x with MD4's MLP swapped in
(``experiments/results/sampler_vs_md4.md``).
"""

import inspect
import math
import textwrap
import time

import jax
import jax.numpy as jnp
from absl import flags

from experiments import cli
from experiments.benchmarks import sampling_speed
from tcsm_jax import errors, processes, sampling, schedules
from tcsm_jax.models import transformer

_SETTING = flags.DEFINE_string("setting", "6x384:256:16:32",
                               "LAYERSxWIDTH:TOKENS:BATCH:STEPS.")
_REPEATS = sampling_speed._REPEATS   # pylint: disable=protected-access  (--repeats, shared)
_MD4 = flags.DEFINE_bool("md4", False, "Add MD4's rows (needs md4_shim importable).")
_V = 27


def md4_mlp_hidden(width: int) -> int:
  """MD4's GLU hidden size: ``int(2 * 4 * width / 3)`` rounded up to a multiple of 32."""
  return 32 * ((int(2 * 4 * width / 3) + 31) // 32)


def _swapped_block(kind: str, width: int):
  """A ``transformer.Block`` subclass whose MLP line is replaced (measurement only)."""
  src = textwrap.dedent(inspect.getsource(transformer.Block.__call__))
  line = '  y = dense(d, "mlp_out")(nn.gelu(dense(cfg.mlp_ratio * d, "mlp_in")(y)))'
  if line not in src:
    raise RuntimeError("transformer.Block's MLP line changed; update md4_gap")
  h = md4_mlp_hidden(width)
  new = {"no_gelu": '  y = dense(d, "mlp_out")(dense(cfg.mlp_ratio * d, "mlp_in")(y))',
         "md4_mlp": f'  y = dense(d, "mlp_out")(nn.sigmoid(dense({h}, "mlp_in")(y)) * '
                    f'dense({h}, "mlp_gate")(y))'}[kind]
  ns = dict(vars(transformer))
  exec(compile(src.replace(line, new), "<md4_gap>", "exec"), ns)   # pylint: disable=exec-used
  return type("Block", (transformer.Block,), {"__call__": ns["__call__"]})


def _model(layers, width, tokens, swap=None):
  """``(apply_fn, params)``; with ``swap`` the Block class is swapped while the model is
  initialised and while ``apply_fn`` is traced (``_block_class`` reads it then)."""
  block = _swapped_block(swap, width) if swap else transformer.Block

  def swapped(fn, *args):
    saved, transformer.Block = transformer.Block, block
    try:
      return fn(*args)
    finally:
      transformer.Block = saved

  apply_fn, params = swapped(sampling_speed.random_model, layers, width, tokens)
  return (lambda p, x, s: swapped(apply_fn, p, x, s)), params


def _md4(layers, width, tokens, batch, steps, null=False):
  import md4_shim  # pylint: disable=import-outside-toplevel
  model = md4_shim.make_md4(layers, width, max(1, width // 64), tokens, vocab=_V,
                            timesteps=steps)
  params = model.init({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
                      jnp.zeros((1, tokens), jnp.int32)).get("params", {})
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree.unflatten(tree, [0.02 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  table = jax.random.normal(jax.random.PRNGKey(5), (_V + 1, _V))

  def predict(variables, zt, t):
    if null:
      return table[zt]
    return model.apply(variables, zt, t, method=model.predict_x)[0]

  def gen(params, rng):                 # md4/sampling.py::simple_generate
    variables = {"params": params}
    rng, sub = jax.random.split(rng)
    zt = model.apply(variables, batch, method=model.prior_sample, rngs={"sample": sub})
    rng, sub = jax.random.split(rng)
    if null:
      saved = md4_shim.MD4.predict_x
      md4_shim.MD4.predict_x = lambda self, zt, t, cond=None, train=False: (table[zt], None)
    try:
      body = lambda i, zt: model.apply(variables, sub, i, model.timesteps, zt,
                                       conditioning=None, method=model.sample_step)
      z0 = jax.lax.fori_loop(0, model.timesteps, body, zt)
      if null:
        return z0
      return model.apply(variables, z0, conditioning=None, method=model.decode,
                         rngs={"sample": rng})
    finally:
      if null:
        md4_shim.MD4.predict_x = saved

  fwd = lambda p, x: predict({"params": p}, x, jnp.float32(0.5))
  return gen, fwd, params


def _time(rows, repeats):
  """Interleaved rounds; ``rows``: {name: (fn, args)}; returns {name: best seconds}."""
  for fn, args in rows.values():
    jax.block_until_ready(fn(*args))
  best = {k: math.inf for k in rows}
  for r in range(repeats):
    names = list(rows)
    for k in names[r % len(names):] + names[:r % len(names)]:
      fn, args = rows[k]
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[k] = min(best[k], time.perf_counter() - t0)
  return best


def _print(title, best, base, per, unit):
  print(f"\n{title}\n{'row':<28}{unit:>12}{'vs ' + base:>16}")
  for k, t in best.items():
    print(f"{k:<28}{t / per * 1e3:>12.2f}{best[base] / t:>16.3f}")


def run(setting, repeats, md4=False):
  layers, width, tokens, batch, steps = sampling_speed.parse_setting(setting)
  proc, sched = processes.Absorbing(_V), schedules.get("log_linear")
  key = jax.random.PRNGKey(1)
  loop = lambda apply_fn, **kw: jax.jit(lambda p, k: sampling.jit_sampler(
      apply_fn, proc, sched, (batch, tokens), steps=steps, sampler="analytic",
      **kw)(p, k)[0])
  print(f"{setting}: {layers} layers x {width}, {tokens} tokens, batch {batch}, "
        f"{steps} steps, jax {jax.__version__}, {jax.devices()[0].platform}")
  base = "md4" if md4 else "tcsm"
  # 1. Sampler arithmetic alone.
  table = jax.random.normal(jax.random.PRNGKey(5), (_V + 1, _V))
  null = {"tcsm": (loop(lambda p, x, s: p[x]), (table, key)),
          "tcsm gumbel32": (loop(lambda p, x, s: p[x], draw="gumbel32"), (table, key))}
  nets = {"tcsm": _model(layers, width, tokens)}
  if md4:
    gen, _, mp = _md4(layers, width, tokens, batch, steps, null=True)
    null = {"md4": (jax.jit(gen), (mp, key)), **null}
  _print("null network: ms per step", _time(null, repeats), base, steps, "ms/step")
  # 2. One denoiser call.
  x = jnp.full((batch, tokens), proc.mask_id, jnp.int32).at[:, ::3].set(5)
  fwd_rows = {"tcsm": (jax.jit(nets["tcsm"][0]), (nets["tcsm"][1], x, jnp.ones((batch,))))}
  if md4:
    gen, fwd, mp = _md4(layers, width, tokens, batch, steps)
    fwd_rows = {"md4": (jax.jit(fwd), (mp, x)), **fwd_rows}
  best = _time(fwd_rows, max(3, repeats))
  _print("forward: ms per call", best, base, 1, "ms/call")
  for k, (fn, args) in fwd_rows.items():
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    print(f"{k:<28}{cost.get('flops', float('nan')) / 1e9:>12.4g} GFLOP")
  # 3. Whole loops.
  for swap in ("no_gelu", "md4_mlp"):
    nets[f"tcsm {swap}"] = _model(layers, width, tokens, swap)
  loops = {"tcsm": (loop(nets["tcsm"][0]), (nets["tcsm"][1], key)),
           "tcsm gumbel32": (loop(nets["tcsm"][0], draw="gumbel32"), (nets["tcsm"][1], key))}
  for name in ("tcsm no_gelu", "tcsm md4_mlp"):
    loops[name] = (loop(nets[name][0]), (nets[name][1], key))
  if md4:
    gen, _, mp = _md4(layers, width, tokens, batch, steps)
    loops = {"md4": (jax.jit(gen), (mp, key)), **loops}
  best = _time(loops, repeats)
  _print(f"loops ({steps} steps): ms per sample batch", best, base, 1, "ms")
  return best


def _check_flags():
  """One line (status 2) for a malformed setting or a missing MD4 setup."""
  try:
    layers, width, tokens, batch, steps = sampling_speed.parse_setting(_SETTING.value)
  except ValueError:
    raise errors.FlagError(f"--setting must be LAYERSxWIDTH:TOKENS:BATCH:STEPS (e.g. "
                           f"6x384:256:16:32), got {_SETTING.value!r}") from None
  heads = max(1, width // 64)
  if min(layers, width, tokens, batch, steps) < 1 or width % heads or (width // heads) % 2:
    raise errors.FlagError(f"--setting needs positive sizes and a width that splits into "
                           f"width // 64 heads of an even size, got {_SETTING.value!r}")
  if _REPEATS.value < 1:
    raise errors.FlagError(f"--repeats must be >= 1, got {_REPEATS.value}")
  if _MD4.value:
    try:
      import md4_shim  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
      raise errors.FlagError(f"--md4 needs MD4 set up as ../shared/tools/md4_side_by_side"
                             f" says (md4_shim importable): {e}") from None


def main(argv):
  del argv
  _check_flags()
  run(_SETTING.value, _REPEATS.value, _MD4.value)


if __name__ == "__main__":
  cli.run(main)

r"""Sampling on a TPU slice, checked by the TPU compiler: ``jit_sampler`` compiled AOT.

  python -m experiments.benchmarks.tpu_sample_plan --target=tpu:v5e:2x2 \
      --size=gpt2_small --per_chip_batch=8 --seq_len=1024 --steps=128 [--sampler=analytic]

The whole sampler (``tcsm_jax.sampling.jit_sampler``: start state, ``--steps`` reverse
steps, final denoise) is lowered with abstract parameters (bf16 activations, float32
parameters, splash attention, FSDP-sharded or replicated weights) and a batch of
``per_chip_batch x chips`` sequences split over the slice, then compiled by libtpu for
the described slice. Reported per chip: arguments, temporaries, peak; the compiled
program's ``while`` loops with their trip counts (the reverse steps are one loop on the
device); and every instruction that would talk to the host inside it (outfeed, send /
recv, host callbacks, host-memory transfers), which must be none: no host round trip
per step. ``--hlo_out`` writes the compiled HLO text.
"""

import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from etils import epath

from experiments.benchmarks import scale_plan
from tcsm_jax import models, processes, sampling
from tcsm_jax.training import experiment, partition

# --target, --seq_len, --vocab and --attention_impl are scale_plan's flags (same meaning).
_TARGET, _SEQ, _VOCAB = scale_plan._TARGET, scale_plan._SEQ, scale_plan._VOCAB  # pylint: disable=protected-access
_SIZE = flags.DEFINE_string("size", "gpt2_small", "Model size.")
_BATCH = flags.DEFINE_integer("per_chip_batch", 8, "Sequences per chip.")
_STEPS = flags.DEFINE_integer("steps", 128, "Reverse steps.")
_SAMPLER = flags.DEFINE_string("sampler", "analytic", "Sampler.")
_FSDP = flags.DEFINE_integer("fsdp", 1, "mesh.fsdp (1: replicated weights).")
_ATTN = scale_plan._ATTN  # pylint: disable=protected-access
_HLO = flags.DEFINE_string("hlo_out", "", "Write the compiled HLO text here.")

# What would make a step talk to the host: none may appear in the compiled sampler.
HOST_OPS = ("outfeed", "infeed", "send", "recv", "send-done", "recv-done",
            "host_callback", "xla_python_cpu_callback", "xla_ffi_python_cpu_callback",
            "MoveToHost", "MoveToDevice")


def while_loops(hlo_text: str):
  """``[(name, trip count or None, op_name)]`` of every ``while`` in a compiled HLO
  (the trip count from ``known_trip_count`` or the loop's condition)."""
  texts = scale_plan._computations(hlo_text)  # pylint: disable=protected-access
  out = []
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\swhile\(", line)
    if m:
      trip = re.search(r'known_trip_count\D*?(\d+)', line)
      cond = re.search(r"condition=%?([\w.\-]+)", line)
      trip = int(trip.group(1)) if trip else scale_plan.condition_trip_count(
          texts.get(cond.group(1), []) if cond else [])
      op = re.search(r'op_name="([^"]+)"', line)
      out.append((m.group(1), trip, op.group(1) if op else ""))
  return out


def host_ops(hlo_text: str):
  """Instructions of a compiled HLO that move data to or from the host."""
  found = []
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.+?\s([a-z][\w\-]*)\(", line)
    if m and m.group(1) in HOST_OPS:
      found.append(m.group(1))
    elif "custom_call_target=" in line and any(h in line for h in HOST_OPS):
      found.append(re.search(r'custom_call_target="([^"]+)"', line).group(1))
  return found


def compile_sampler(config, vocab: int, mesh, per_chip_batch: int, steps: int,
                    sampler: str):
  """Compiles ``jit_sampler`` for ``mesh`` with abstract parameters; returns a dict
  (memory in bytes, ``while`` loops, host ops, compile seconds, ``hlo``)."""
  proc = processes.get(config.process, vocab)
  model = models.build_denoiser(config, vocab, proc.num_states)
  sched = experiment.schedule_from_config(config.schedule)
  seq = config.data.seq_len
  n = mesh.devices.size
  shape = (per_chip_batch * n, seq)
  abstract = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, seq),
                                                 jnp.int32), jnp.ones((1,)))["params"],
                            jax.random.PRNGKey(0))
  p_sh = partition.state_shardings(abstract, mesh)
  apply = lambda p, x, s: model.apply({"params": p}, x, s)
  fn = sampling.jit_sampler(apply, proc, sched, shape, steps=steps, sampler=sampler)

  def on_mesh(params, key):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(params, key)

  bsh = partition.batch_sharding(mesh)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  step = jax.jit(on_mesh, in_shardings=(p_sh, partition.replicated(mesh)),
                 out_shardings=(bsh, None))
  t0 = time.perf_counter()
  compiled = step.lower(abstract, key).compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  hlo = compiled.as_text()
  out = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
             temp=ma.temp_size_in_bytes, alias=ma.alias_size_in_bytes,
             num_params=models.count_params(abstract), compile_s=compile_s,
             loops=while_loops(hlo), host=host_ops(hlo), hlo=hlo,
             kernels=hlo.count("tpu_custom_call"))
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def main(_):
  if not _TARGET.value.startswith("tpu:"):
    raise app.UsageError(f"--target must be tpu:TOPOLOGY, got {_TARGET.value!r}")
  scale_plan.require_libtpu()
  topo = _TARGET.value[len("tpu:"):]
  devices = scale_plan.tpu_devices(topo)
  mesh = partition.make_mesh(_FSDP.value, devices)
  cfg = scale_plan.plan_config(_SIZE.value, _SEQ.value, "none", True, "bfloat16",
                               attention_impl=_ATTN.value or "splash")
  print(f"TPU compiler (libtpu {scale_plan._libtpu_version()}, jax {jax.__version__}), "
        f"ahead of time for {topo}: {len(devices)} chips ({devices[0].device_kind}) | "
        f"{_SIZE.value} | {_SAMPLER.value} sampler, {_STEPS.value} steps | "
        f"{_BATCH.value} x {_SEQ.value} tokens per chip | bf16 activations | attention "
        f"{_ATTN.value or 'splash'} | mesh.fsdp={_FSDP.value}")
  r = compile_sampler(cfg, _VOCAB.value, mesh, _BATCH.value, _STEPS.value,
                      _SAMPLER.value)
  g = scale_plan.GIB
  print(f"params {r['num_params'] / 1e9:.3f}B | per chip: arguments "
        f"{r['argument'] / g:.2f} GiB, temporaries {r['temp'] / g:.2f} GiB, output "
        f"{r['output'] / g:.3f} GiB, peak {r['peak'] / g:.2f} GiB | compile "
        f"{r['compile_s']:.1f} s")
  print("while loops (trip count, where):")
  for name, trip, op in r["loops"]:
    print(f"  {name}: {trip} x  {op}")
  print(f"Mosaic kernels (tpu_custom_call): {r['kernels']} | host transfers in the "
        f"program: {r['host'] or 'none'}")
  if _HLO.value:
    epath.Path(_HLO.value).write_text(r["hlo"])


if __name__ == "__main__":
  app.run(main)

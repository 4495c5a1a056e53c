r"""Peak memory of the loss and its gradient against the vocabulary size V.

  python -m experiments.benchmarks.loss_memory [--vocab=1000,8000,32000,50257]
      [--batch=8] [--seq_len=128] [--chunk=128] [--losses=score_gkl,masked_elbo]

For each V, logits dtype (float32 / bfloat16 network) and ``loss.chunk_size`` (0 = the
whole ``[b, L, V]`` at once, else chunks of positions, ``losses.per_position``) prints
XLA's compiled memory analysis (``compiled.memory_analysis()``: temp bytes, i.e. the
buffers live inside the program besides its arguments and outputs) of two programs,
compiled for the CPU with abstract shapes (nothing is allocated):

* ``loss``: ``value_and_grad`` of the objective (``objective.make_loss_fn``) with
  respect to the logits (the loss alone);
* ``model``: ``value_and_grad`` with respect to the parameters of a 2-layer x 128
  denoiser whose head has V outputs (what a train step differentiates).

The reference column is the size of one float32 ``[b, L, V]`` array. The numbers are
XLA:CPU's buffer assignment; a GPU or TPU compiler schedules differently, but the
arrays that must coexist are the same.
"""

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from tcsm_jax import objective, processes, schedules
from tcsm_jax.models import transformer

_VOCAB = flags.DEFINE_list("vocab", ["1000", "8000", "32000", "50257"], "Vocabulary sizes.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Sequence length.")
_CHUNK = flags.DEFINE_integer("chunk", 128, "loss.chunk_size of the chunked rows.")
_LOSSES = flags.DEFINE_list("losses", ["score_gkl", "masked_elbo"], "Objectives: "
                            "score_gkl, distribution_kl, masked_elbo, sedd.")

LOSSES = {"score_gkl": dict(kind="tcsm", form="score", divergence="gkl"),
          "distribution_kl": dict(kind="tcsm", form="distribution", divergence="kl"),
          "masked_elbo": dict(kind="masked_elbo"),
          "sedd": dict(kind="sedd")}

MIB = 2 ** 20


def loss_config(name: str, chunk: int) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      kind="tcsm", form="score", divergence="gkl", weighting="masked_elbo", t_min=1e-5,
      stratified=True, teacher_weight=0.0, hamming=1, chunk_size=chunk))
  cfg.update(LOSSES[name])
  return cfg


def temp_bytes(fn, *abstract_args) -> int:
  compiled = jax.jit(fn).lower(*abstract_args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def measure(v: int, dtype, chunk: int, loss_name: str, b: int, length: int):
  """``(loss temp bytes, model temp bytes)`` for one setting."""
  proc = processes.get("uniform" if loss_name == "sedd" else "absorbing", v)
  sched = schedules.get("log_linear")
  cfg = loss_config(loss_name, chunk)
  x0 = jax.ShapeDtypeStruct((b, length), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  # The loss alone: the "parameters" are the logits.
  fn = objective.make_loss_fn(cfg, proc, sched, lambda p, *_: p)
  grad = jax.value_and_grad(lambda p, x, k: fn(p, x, k, True)[0])
  loss_t = temp_bytes(grad, jax.ShapeDtypeStruct((b, length, v), dtype), x0, key)
  # A small denoiser with a V-wide head.
  mcfg = transformer.TransformerConfig(vocab_size=v, num_input_states=proc.num_states,
                                       max_length=length, num_layers=2, width=128,
                                       num_heads=4, dtype=dtype, attention_impl="einsum")
  model = transformer.DiffusionTransformer(mcfg)
  params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, length), jnp.int32),
                                               jnp.ones((1,)))["params"],
                          jax.random.PRNGKey(0))
  apply = lambda p, x_t, s, train, k: model.apply({"params": p}, x_t, s)
  fn = objective.make_loss_fn(cfg, proc, sched, apply)
  grad = jax.value_and_grad(lambda p, x, k: fn(p, x, k, True)[0])
  model_t = temp_bytes(grad, params, x0, key)
  return loss_t, model_t


def main(_):
  b, length = _BATCH.value, _SEQ.value
  print(f"batch {b} x {length} positions; temp bytes of XLA:CPU's memory analysis (MiB); "
        f"chunk = loss.chunk_size (0: all positions at once)")
  head = (f"{'loss':<13}{'V':>7}{'logits':>10}{'chunk':>7}{'[b,L,V] f32':>13}"
          f"{'loss+grad':>11}{'x f32 arr':>10}{'model+grad':>12}")
  print(head)
  print("-" * len(head))
  for loss_name in _LOSSES.value:
    for v in map(int, _VOCAB.value):
      ref = b * length * v * 4
      for dtype in (jnp.float32, jnp.bfloat16):
        for chunk in (0, _CHUNK.value):
          lt, mt = measure(v, dtype, chunk, loss_name, b, length)
          print(f"{loss_name:<13}{v:>7}{jnp.dtype(dtype).name:>10}{chunk:>7}"
                f"{ref / MIB:>13.1f}{lt / MIB:>11.1f}{lt / ref:>10.2f}{mt / MIB:>12.1f}",
                flush=True)


if __name__ == "__main__":
  app.run(main)

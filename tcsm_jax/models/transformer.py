"""Transformers for discrete diffusion (bidirectional, noise-conditioned) and AR models.

One family, two modes:

* ``DiffusionTransformer``: non-causal, conditioned on the noise level through
  adaptive LayerNorm (DiT's adaLN-Zero: every block's shift/scale/gate come from the
  noise embedding and start at zero, so each block is the identity at init), rotary
  position embeddings, outputs ``[batch, length, vocab_size]`` denoiser logits over the
  *clean* tokens (the mask state is input-only).
* ``CausalTransformer``: the same blocks with a causal mask and no noise input; outputs
  next-token logits (``logits[:, i]`` predicts token ``i + 1``). Used as AR teacher,
  generative-perplexity judge and baseline.

Parameters are float32; ``dtype`` sets the activation/matmul dtype (``bfloat16`` on
accelerators).

Attention (``TransformerConfig.attention_impl``, config key ``model.attention_impl``):

* ``"auto"`` (default): on TPU splash attention (below) where the sequence length is a
  multiple of 128; on GPU with bfloat16/float16 activations and a head dimension
  cuDNN supports (a multiple of 8, at most 128), the cuDNN fused kernel; where JAX's
  cuDNN path refuses the call at trace time, on GPU in float32 and on TPU at other
  lengths, ``jax.nn.dot_product_attention(implementation=None)`` (which does *not* pick cuDNN by
  itself: measured on an H200, GPT-2-small size, bf16, 32 x 1024 tokens, its train step
  ran at 330k tokens/s and 41.8 GiB peak against cuDNN's 607k tokens/s and 14.1 GiB);
  on CPU the same arithmetic written head-major (``_attention_einsum``),
  which XLA:CPU runs in ~2/3 of the time of the ``[B, T, N, H]`` einsums inside
  ``jax.nn.dot_product_attention`` (measured on 2 cores, 6 layers x 384, 256 tokens).
* ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")`` on every backend.
* ``"cudnn"``: ``implementation="cudnn"``. Needs a GPU and ``dtype`` bfloat16/float16;
  anything else is a ``ValueError`` (no silent fallback: asking for cuDNN and getting
  XLA would make timings and MFU numbers lie).
* ``"einsum"``: the head-major form on every backend.
* ``"splash"``: the Pallas TPU flash-attention kernel
  (``jax.experimental.pallas.ops.tpu.splash_attention``; forward, dq and dkv kernels, no
  ``[T, T]`` logits in memory). Needs a sequence length that is a multiple of 128 (its
  tile); ``auto`` picks it on TPU where the length allows. The choice of program is made
  when the function is lowered (``jax.lax.platform_dependent``): lowered for a TPU the
  program holds the Mosaic kernels (``tpu_custom_call``), lowered for the CPU it runs
  the same kernel in Pallas interpret mode (slow; what the tests compare against XLA's
  attention). On GPU it is a ``ValueError``.

All five compute the same function (equal to float32 rounding; tested) and none has
parameters, so checkpoints do not depend on the choice. Rotary tables are built once per
trace with NumPy (constants of the compiled program) and applied to ``q`` and ``k`` in
one pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Dtype = Any

SIZES = {
    # name: (num_layers, width, num_heads)
    "tiny": (2, 128, 4),
    "small": (6, 384, 6),
    "medium": (8, 512, 8),
    "gpt2_small": (12, 768, 12),
    "gpt2_medium": (24, 1024, 16),
    # Planning sizes (experiments.benchmarks.scale_plan): with GPT-2's 50,257 tokens,
    # 1.0B (Pythia-1B's shape) and 6.9B (LLaMA-7B's shape, GELU MLP) parameters.
    "1b": (16, 2048, 16),
    "7b": (32, 4096, 32),
}

# model.remat_policy: what a rematerialized block saves for the backward pass
# (jax.checkpoint_policies); "nothing_saveable" recomputes the whole block.
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable",
                  "dots_saveable", "everything_saveable")

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum", "splash")

# Splash attention (the Pallas TPU kernel) tiles the sequence in blocks of 128 lanes.
SPLASH_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyper-parameters (hashable, so modules can close over them)."""

  vocab_size: int                 # clean tokens predicted
  num_input_states: int           # tokens the input embedding accepts (V or V + 1)
  max_length: int = 256
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  cond_width: int = 128           # noise-embedding width
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "nothing_saveable"   # with remat: a REMAT_POLICIES name
  scan_layers: bool = False       # one compiled block, scanned (faster compiles)
  causal: bool = False
  rope_base: float = 10000.0
  attention_impl: str = "auto"    # auto | xla | cudnn | einsum | splash (module docstring)

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"model width {self.width} must be divisible by num_heads "
                       f"{self.num_heads}")
    if (self.width // self.num_heads) % 2:
      raise ValueError("head dimension must be even for rotary embeddings")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy must be one of {REMAT_POLICIES}, got "
                       f"{self.remat_policy!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention_impl must be one of {ATTENTION_IMPLS}, got "
                       f"{self.attention_impl!r}")
    if self.attention_impl == "cudnn" and jnp.dtype(self.dtype) not in (
        jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
      raise ValueError("model.attention_impl='cudnn' needs model.dtype bfloat16 (cuDNN "
                       f"fused attention has no {jnp.dtype(self.dtype).name} kernel); use "
                       "'auto' or 'xla'")


def config_from(model_cfg: ml_collections.ConfigDict, vocab_size: int,
                num_input_states: int, max_length: int, causal: bool = False
                ) -> TransformerConfig:
  """Builds a ``TransformerConfig`` from ``config.model`` (size preset + overrides)."""
  if model_cfg.size not in SIZES:
    raise ValueError(f"unknown model size {model_cfg.size!r}; choose one of {sorted(SIZES)}")
  layers, width, heads = SIZES[model_cfg.size]
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if model_cfg.dtype not in dtypes:
    raise ValueError(f"model.dtype must be one of {sorted(dtypes)}, got {model_cfg.dtype!r}")
  # ``model.attention_impl`` may be missing from configs written before it existed.
  attention_impl = model_cfg.get("attention_impl", "auto") or "auto"
  return TransformerConfig(
      vocab_size=vocab_size, num_input_states=num_input_states, max_length=max_length,
      num_layers=model_cfg.get("num_layers") or layers,
      width=model_cfg.get("width") or width,
      num_heads=model_cfg.get("num_heads") or heads,
      mlp_ratio=model_cfg.get("mlp_ratio", 4), cond_width=model_cfg.get("cond_width", 128),
      dropout=model_cfg.get("dropout", 0.0), dtype=dtypes[model_cfg.dtype],
      remat=model_cfg.get("remat", False),
      remat_policy=model_cfg.get("remat_policy", "nothing_saveable") or "nothing_saveable",
      scan_layers=model_cfg.get("scan_layers", False), causal=causal,
      attention_impl=attention_impl)


@functools.lru_cache(maxsize=64)
def rotary_tables(length: int, dim: int, base: float):
  """``(cos, sin)``, each ``[length, dim // 2]`` float32 NumPy arrays.

  Built on the host once per ``(length, dim, base)``; inside a jitted function they are
  constants of the program, not ops that run at every call.
  """
  freqs = np.float32(base) ** (-np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
  ang = np.arange(length, dtype=np.float32)[:, None] * freqs[None]        # [L, D/2]
  return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rotary(x, base: float):
  """Applies rotary position embeddings to ``x [batch, length, ..., head_dim]``.

  The axes between ``length`` and ``head_dim`` (heads; or ``(2, heads)`` for a stacked
  ``q``/``k``) share the same rotation.
  """
  length, dim = x.shape[1], x.shape[-1]
  cos, sin = rotary_tables(length, dim, float(base))
  extra = (None,) * (x.ndim - 3)
  cos, sin = cos[(None, slice(None)) + extra], sin[(None, slice(None)) + extra]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
  return out.astype(x.dtype)


def _attention_einsum(q, k, v, causal: bool):
  """Softmax attention over ``[batch, length, heads, head_dim]`` in head-major layout.

  Same function as ``jax.nn.dot_product_attention`` (logits and softmax in float32,
  probabilities cast to ``v``'s dtype); the explicit transposes let XLA:CPU run plain
  batched matmuls.
  """
  d = q.shape[-1]
  qh = q.transpose(0, 2, 1, 3)                                     # [B, N, T, H]
  kh = k.transpose(0, 2, 3, 1)                                     # [B, N, H, S]
  vh = v.transpose(0, 2, 1, 3)                                     # [B, N, S, H]
  logits = jnp.matmul(qh, kh, preferred_element_type=jnp.float32)
  logits = logits * np.float32(1.0 / math.sqrt(d))
  if causal:
    t, s = logits.shape[-2:]
    allowed = np.tril(np.ones((t, s), bool))
    logits = jnp.where(allowed, logits, np.finfo(np.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.matmul(probs, vh).transpose(0, 2, 1, 3)               # [B, T, N, H]


def _cudnn_may_run(q) -> bool:
  """cuDNN flash attention's basic conditions: half precision, head dim % 8, <= 128."""
  return (q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0
          and q.shape[-1] <= 128)


def splash_unsupported(length: int) -> Optional[str]:
  """Why splash attention cannot run a sequence of ``length`` (``None`` if it can)."""
  if length % SPLASH_BLOCK:
    return (f"model.attention_impl='splash' needs a sequence length that is a multiple "
            f"of {SPLASH_BLOCK} (the kernel's tile), got {length}")
  return None


def _splash_kernels(length: int, heads: int, causal: bool):
  """``(tpu, interpret)``: the splash kernel of one ``[heads, length, head_dim]`` example,
  compiled (Mosaic) and in Pallas interpret mode. Built at each trace (its mask tables
  are arrays of the trace: a cached kernel would leak them into the next trace)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as sk, splash_attention_mask as sm)
  one = sm.CausalMask((length, length)) if causal else sm.FullMask((length, length))
  mask = sm.MultiHeadMask([one] * heads)
  b = max(blk for blk in (512, 256, 128) if length % blk == 0)
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                        block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b,
                        block_kv_dq=b)
  make = lambda interpret: sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1,
                                              q_seq_shards=1, interpret=interpret)
  return make(False), make(True)


def splash_attention(q, k, v, causal: bool):
  """Splash attention ``[batch, length, heads, head_dim]`` (see the module docstring).

  The kernel runs per example (``vmap``) on ``[heads, length, head_dim]``, with ``q``
  scaled by ``1 / sqrt(head_dim)``; logits and softmax statistics in float32. Under a
  context mesh it runs inside ``shard_map`` over the batch axes (a Mosaic call is not
  partitioned by XLA: each device runs it on its own rows).
  """
  t, n, d = q.shape[1:]
  why = splash_unsupported(t)
  if why:
    raise ValueError(why)
  if jax.default_backend() == "gpu":
    raise ValueError("model.attention_impl='splash' is a TPU kernel; on GPU use 'auto', "
                     "'cudnn' or 'xla'")
  tpu, interpret = _splash_kernels(t, n, causal)
  scale = np.float32(1.0 / math.sqrt(d))

  def run(q, k, v):                                # [b, T, N, H] -> [b, T, N, H]
    qh = (q * scale.astype(q.dtype)).transpose(0, 2, 1, 3)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    out = jax.lax.platform_dependent(qh, kh, vh, tpu=jax.vmap(tpu),
                                     default=jax.vmap(interpret))
    return out.transpose(0, 2, 1, 3)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or q.shape[0] % mesh.size:
    return run(q, k, v)
  spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
  return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)


def attention(q, k, v, *, causal: bool, impl: str = "auto"):
  """Softmax attention ``[batch, length, heads, head_dim]`` with the chosen kernel."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
  backend = jax.default_backend()
  if impl == "splash" or (impl == "auto" and backend == "tpu"
                          and not splash_unsupported(q.shape[1])):
    return splash_attention(q, k, v, causal)
  if impl == "cudnn":
    if backend != "gpu":
      raise ValueError(f"model.attention_impl='cudnn' needs a GPU (backend is {backend!r}); "
                       "use 'auto' or 'xla'")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"model.attention_impl='cudnn' needs bfloat16/float16 activations, "
                       f"got {q.dtype}")
  if impl == "einsum" or (impl == "auto" and backend == "cpu"):
    return _attention_einsum(q, k, v, causal)
  if impl == "auto" and backend == "gpu" and _cudnn_may_run(q):
    try:
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                          implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError):
      pass             # JAX refused this shape / version at trace time: its default
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                      implementation=None if impl == "auto" else impl)


def constrain_batch(x):
  """``x [batch, ...]`` split over every axis of the context mesh on its batch axis.

  Under a context mesh (``training.step.make_train_step(..., mesh=mesh)``) the
  hidden states between blocks are pinned to the data layout (batch over all devices),
  so XLA's partitioner gathers FSDP-sharded weights (per layer, inside a scanned block)
  rather than computing every matmul over the whole global batch and all-reducing
  activations, which it otherwise prefers for weights sharded on their contracting
  dimension (1.6 GB all-reduced logits per step at GPT-2-small size on 8 devices:
  ``experiments/results/scale_plan.md``). Without a context mesh: the identity.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or x.shape[0] % mesh.size:
    return x
  spec = (tuple(mesh.axis_names),) + (None,) * (x.ndim - 1)
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))


def noise_embedding(sigma, dim: int, max_period: float = 10000.0):
  """Sinusoidal features of ``log(sigma_bar)``-like scalars: ``[batch] -> [batch, dim]``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None] * 1000.0
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


def modulate(x, shift, scale):
  """adaLN: ``x [batch, length, d] * (1 + scale[:, None]) + shift[:, None]``."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, cond, deterministic: bool):
    cfg = self.cfg
    d, h = cfg.width, cfg.num_heads
    dense = lambda n, name, **kw: nn.Dense(n, dtype=cfg.dtype, name=name, **kw)
    norm = lambda name: nn.LayerNorm(use_bias=False, use_scale=cond is None,
                                     dtype=cfg.dtype, name=name)
    if cond is not None:
      mod = nn.Dense(6 * d, dtype=cfg.dtype, kernel_init=nn.initializers.zeros,
                     name="adaln")(nn.silu(cond))
      sh1, sc1, g1, sh2, sc2, g2 = jnp.split(mod, 6, -1)
    # Attention.
    y = norm("ln_attn")(x)
    if cond is not None:
      y = modulate(y, sh1, sc1)
    qkv = dense(3 * d, "qkv", use_bias=False)(y).reshape(x.shape[:2] + (3, h, d // h))
    qk = rotary(qkv[:, :, :2], cfg.rope_base)                  # q and k in one pass
    att = attention(qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2], causal=cfg.causal,
                    impl=cfg.attention_impl)
    y = dense(d, "attn_out")(att.reshape(x.shape[:2] + (d,)))
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    x = x + (g1[:, None] * y if cond is not None else y)
    # MLP.
    y = norm("ln_mlp")(x)
    if cond is not None:
      y = modulate(y, sh2, sc2)
    y = dense(d, "mlp_out")(nn.gelu(dense(cfg.mlp_ratio * d, "mlp_in")(y)))
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    return constrain_batch(x + (g2[:, None] * y if cond is not None else y))


def _block_class(cfg: TransformerConfig):
  """``Block``, rematerialized with ``cfg.remat_policy`` when ``cfg.remat``."""
  if not cfg.remat:
    return Block
  return nn.remat(Block, static_argnums=(3,),
                  policy=getattr(jax.checkpoint_policies, cfg.remat_policy))


class _ScanBlock(nn.Module):
  """``Block`` in the ``(carry, x) -> (carry, y)`` form that ``nn.scan`` needs."""

  cfg: TransformerConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, cond):
    return _block_class(self.cfg)(self.cfg, name="block")(x, cond,
                                                          self.deterministic), None


class _Trunk(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, cond, deterministic, soft_tokens=None,
               return_hidden: bool = False):
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if tokens.shape[1] > cfg.max_length:
      raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's "
                       f"max_length {cfg.max_length}")
    embed = nn.Embed(cfg.num_input_states, cfg.width, name="embed",
                     embedding_init=nn.initializers.normal(0.02))
    x = embed(tokens)
    if soft_tokens is not None:
      # [batch, length, num_input_states] weights (e.g. one-hot): differentiable input.
      x = jnp.matmul(soft_tokens.astype(jnp.float32), embed.embedding,
                     precision=jax.lax.Precision.HIGHEST)
    x = constrain_batch(x.astype(cfg.dtype))
    if cfg.scan_layers:
      scanned = nn.scan(_ScanBlock, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=cfg.num_layers)
      x, _ = scanned(cfg, deterministic, name="blocks")(x, cond)
    else:
      block = _block_class(cfg)
      for i in range(cfg.num_layers):
        x = block(cfg, name=f"block_{i}")(x, cond, deterministic)
    y = nn.LayerNorm(use_bias=False, use_scale=cond is None, dtype=cfg.dtype,
                     name="ln_final")(x)
    if cond is not None:
      shift, scale = jnp.split(nn.Dense(2 * cfg.width, dtype=cfg.dtype,
                                        kernel_init=nn.initializers.zeros,
                                        name="adaln_final")(nn.silu(cond)), 2, -1)
      y = modulate(y, shift, scale)
    if return_hidden:
      return constrain_batch(y)
    init = nn.initializers.zeros if cond is not None else nn.initializers.normal(0.02)
    logits = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, kernel_init=init,
                      name="head")(constrain_batch(y))
    return constrain_batch(logits)


def head_fn(cfg: TransformerConfig, params):
  """``rows [n, width] -> logits [n, vocab_size]``: the trunk's output layer alone (the
  same ``nn.Dense`` as inside the model), for a loss that runs it per chunk of
  positions (``loss.tile_vocab``) on the hidden states of ``return_hidden=True``."""
  head = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, name="head")
  return lambda rows: head.apply({"params": params["trunk"]["head"]}, rows)


class DiffusionTransformer(nn.Module):
  """Denoiser ``(x_t [batch, length], sigma_bar [batch]) -> logits [batch, length, V]``."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_t, sigma_bar, deterministic: bool = True,
               return_hidden: bool = False):
    """``return_hidden``: the hidden states ``[batch, length, width]`` before the output
    layer (``head_fn`` maps them to logits)."""
    cfg = self.cfg
    sigma_bar = jnp.broadcast_to(jnp.asarray(sigma_bar, jnp.float32), x_t.shape[:1])
    # Condition on log(sigma_bar), which spreads the noise levels evenly.
    feat = noise_embedding(jnp.log(jnp.maximum(sigma_bar, 1e-8)) / 10.0, 256)
    cond = nn.Dense(cfg.cond_width, name="cond_in")(feat)
    cond = nn.Dense(cfg.cond_width, name="cond_out")(nn.silu(cond)).astype(cfg.dtype)
    return _Trunk(cfg, name="trunk")(x_t, cond, deterministic,
                                     return_hidden=return_hidden)


class CausalTransformer(nn.Module):
  """Autoregressive model ``tokens [batch, length] -> next-token logits [b, l, V]``."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, soft_tokens=None):
    """``soft_tokens [b, l, V + 1]`` replaces the embedding lookup by a weighted sum
    (one-hot inputs give the same output and make it differentiable in the input)."""
    if not self.cfg.causal:
      raise ValueError("CausalTransformer needs a TransformerConfig with causal=True")
    return _Trunk(self.cfg, name="trunk")(tokens, None, deterministic, soft_tokens)


def ar_log_likelihood(model: CausalTransformer, params, tokens, bos: Optional[int] = None):
  """``log p_AR(tokens)`` per sequence ``[batch]``.

  The first token is scored by the model's prediction at a BOS position: the input is
  ``[bos, tokens[:-1]]`` with ``bos = vocab_size`` by default (the causal model's
  embedding therefore has ``vocab_size + 1`` rows).
  """
  bos = model.cfg.vocab_size if bos is None else bos
  inp = jnp.concatenate([jnp.full(tokens.shape[:1] + (1,), bos, tokens.dtype),
                         tokens[:, :-1]], 1)
  logits = model.apply({"params": params}, inp).astype(jnp.float32)
  lp = jax.nn.log_softmax(logits, -1)
  return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0].sum(-1)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))

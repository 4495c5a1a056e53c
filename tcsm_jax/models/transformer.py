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
accelerators). Attention goes through ``jax.nn.dot_product_attention`` so XLA/cuDNN pick
the fused kernel where one exists.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Dtype = Any

SIZES = {
    # name: (num_layers, width, num_heads)
    "tiny": (2, 128, 4),
    "small": (6, 384, 6),
    "medium": (8, 512, 8),
    "gpt2_small": (12, 768, 12),
    "gpt2_medium": (24, 1024, 16),
}


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
  scan_layers: bool = False       # one compiled block, scanned (faster compiles)
  causal: bool = False
  rope_base: float = 10000.0

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"model width {self.width} must be divisible by num_heads "
                       f"{self.num_heads}")
    if (self.width // self.num_heads) % 2:
      raise ValueError("head dimension must be even for rotary embeddings")


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
  return TransformerConfig(
      vocab_size=vocab_size, num_input_states=num_input_states, max_length=max_length,
      num_layers=model_cfg.get("num_layers") or layers,
      width=model_cfg.get("width") or width,
      num_heads=model_cfg.get("num_heads") or heads,
      mlp_ratio=model_cfg.get("mlp_ratio", 4), cond_width=model_cfg.get("cond_width", 128),
      dropout=model_cfg.get("dropout", 0.0), dtype=dtypes[model_cfg.dtype],
      remat=model_cfg.get("remat", False),
      scan_layers=model_cfg.get("scan_layers", False), causal=causal)


def rotary(x, base: float):
  """Applies rotary position embeddings to ``x [batch, length, heads, head_dim]``."""
  length, dim = x.shape[1], x.shape[-1]
  freqs = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  ang = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs[None]      # [L, D/2]
  cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
  return out.astype(x.dtype)


def noise_embedding(sigma, dim: int, max_period: float = 10000.0):
  """Sinusoidal features of ``log(sigma_bar)``-like scalars: ``[batch] -> [batch, dim]``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None] * 1000.0
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


def _modulate(x, shift, scale):
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
      y = _modulate(y, sh1, sc1)
    qkv = dense(3 * d, "qkv", use_bias=False)(y).reshape(x.shape[:2] + (3, h, d // h))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = rotary(q, cfg.rope_base), rotary(k, cfg.rope_base)
    att = jax.nn.dot_product_attention(q, k, v, is_causal=cfg.causal)
    y = dense(d, "attn_out")(att.reshape(x.shape[:2] + (d,)))
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    x = x + (g1[:, None] * y if cond is not None else y)
    # MLP.
    y = norm("ln_mlp")(x)
    if cond is not None:
      y = _modulate(y, sh2, sc2)
    y = dense(d, "mlp_out")(nn.gelu(dense(cfg.mlp_ratio * d, "mlp_in")(y)))
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    return x + (g2[:, None] * y if cond is not None else y)


class _ScanBlock(nn.Module):
  """``Block`` in the ``(carry, x) -> (carry, y)`` form that ``nn.scan`` needs."""

  cfg: TransformerConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, cond):
    block = nn.remat(Block, static_argnums=(3,)) if self.cfg.remat else Block
    return block(self.cfg, name="block")(x, cond, self.deterministic), None


class _Trunk(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, cond, deterministic, soft_tokens=None):
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
      x = soft_tokens.astype(jnp.float32) @ embed.embedding
    x = x.astype(cfg.dtype)
    if cfg.scan_layers:
      scanned = nn.scan(_ScanBlock, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=cfg.num_layers)
      x, _ = scanned(cfg, deterministic, name="blocks")(x, cond)
    else:
      block = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
      for i in range(cfg.num_layers):
        x = block(cfg, name=f"block_{i}")(x, cond, deterministic)
    y = nn.LayerNorm(use_bias=False, use_scale=cond is None, dtype=cfg.dtype,
                     name="ln_final")(x)
    if cond is not None:
      shift, scale = jnp.split(nn.Dense(2 * cfg.width, dtype=cfg.dtype,
                                        kernel_init=nn.initializers.zeros,
                                        name="adaln_final")(nn.silu(cond)), 2, -1)
      y = _modulate(y, shift, scale)
    init = nn.initializers.zeros if cond is not None else nn.initializers.normal(0.02)
    logits = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, kernel_init=init,
                      name="head")(y)
    return logits


class DiffusionTransformer(nn.Module):
  """Denoiser ``(x_t [batch, length], sigma_bar [batch]) -> logits [batch, length, V]``."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_t, sigma_bar, deterministic: bool = True):
    cfg = self.cfg
    sigma_bar = jnp.broadcast_to(jnp.asarray(sigma_bar, jnp.float32), x_t.shape[:1])
    # Condition on log(sigma_bar), which spreads the noise levels evenly.
    feat = noise_embedding(jnp.log(jnp.maximum(sigma_bar, 1e-8)) / 10.0, 256)
    cond = nn.Dense(cfg.cond_width, name="cond_in")(feat)
    cond = nn.Dense(cfg.cond_width, name="cond_out")(nn.silu(cond)).astype(cfg.dtype)
    return _Trunk(cfg, name="trunk")(x_t, cond, deterministic)


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
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))

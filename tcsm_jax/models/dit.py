"""The DiT of MDLM, SEDD and DUO, as a denoiser over clean tokens (``model.arch = dit``).

MDLM (``kuleshov-group/mdlm``, ``models/dit.py``), SEDD
(``louaaron/Score-Entropy-Discrete-Diffusion``, ``model/transformer.py``) and DUO
(``s-sahoo/duo``, ``models/dit.py``) share one backbone; this module computes the same
function, term for term, so that their checkpoints load here (``models/peers.py``):

* input: an embedding table ``[num_input_states, width]`` (no positional embedding);
* noise conditioning: ``c = silu(MLP(sinusoid_256(sigma)))`` with
  ``MLP = Dense(cond) -> silu -> Dense(cond)``; the sinusoid is GLIDE's
  ``[cos(sigma f), sin(sigma f)]``, ``f_k = 10000^(-k / 128)``, of the *raw* noise level
  (``time_conditioning=False``, MDLM-OWT's setting: ``sigma = 0`` always);
* each block: ``adaLN = Dense(6 width)(c)`` gives shift/scale/gate for attention and
  MLP; LayerNorm *without bias* (a weight, epsilon 1e-5, computed in float32);
  ``qkv = Dense(3 width, no bias)`` split as ``(three, heads, head_dim)``; rotary
  embeddings on ``q`` and ``k`` in the split-halves form (GPT-NeoX ``rotate_half``,
  what ``flash_attn``'s ``apply_rotary_emb_qkv_`` computes with ``interleaved=False``;
  ``transformer.rotary`` here); full bidirectional softmax attention
  (``transformer.attention``); ``x + gate * Dense(width, no bias)(attn)``;
  MLP ``Dense(4 width) -> gelu(tanh) -> Dense(width)`` gated the same way;
* output: LayerNorm, adaLN shift/scale from ``Dense(2 width)(c)``, ``Dense(out)`` with
  a bias, ``out = num_input_states`` rows.

**The CUDA kernels they call, replaced by their reference math.** The peers' modules
import ``flash_attn``: ``flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, L, 0.,
causal=False)`` with equal-length sequences is softmax attention with scale
``1 / sqrt(head_dim)`` (here ``transformer.attention``); ``apply_rotary_emb_qkv_`` is
the non-interleaved rotary above; the TorchScript ``bias_dropout_add_scale`` is
``residual + scale * dropout(x)``. The peers' bf16 autocast is a CUDA-only context (it
does nothing on a CPU tensor); ``model.dtype`` chooses the precision here.

**Denoiser.** The output is ``logits[..., :V]``: the rows of the clean tokens. For all
three peers that is their denoiser up to a per-position constant:

* MDLM (SUBS, absorbing): the mask row gets ``-inf`` and the rest is normalized, i.e.
  ``log_softmax(logits[..., :V])``; carrying unmasked tokens over is the process's job
  (the project's losses and samplers already do it).
* SEDD (absorbing score): the log score at a masked position is
  ``logits - log(e^sigma - 1) - log(V)`` (its ``scale_by_sigma``) with the mask entry
  set to 0. The concrete score of a masked token is
  ``p(x0 = y | x_t) e^-sigma / (1 - e^-sigma)``, so the denoiser is proportional to
  ``score (e^sigma - 1)``, i.e. ``softmax(logits[..., :V])``: the shifts are constants
  of the position (checked against SEDD's own module in ``tests/test_diffusion_parity.py``).
* DUO (uniform, "mean" parameterization): ``log_softmax(logits)`` over its ``V`` rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tcsm_jax.models import transformer

Dtype = Any
LN_EPS = 1e-5            # torch.nn.functional.layer_norm's default, as the peers call it
FREQ_DIM = 256           # TimestepEmbedder's frequency_embedding_size


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Static hyper-parameters of the peers' DiT (hashable)."""

  vocab_size: int                 # clean tokens V (the denoiser's output)
  num_input_states: int           # embedding rows = output rows (V + 1 absorbing, V uniform)
  max_length: int = 1024
  num_layers: int = 12
  width: int = 768
  num_heads: int = 12
  cond_width: int = 128           # the peers' cond_dim
  mlp_ratio: int = 4
  dropout: float = 0.0
  time_conditioning: bool = True  # False: sigma is fed as 0 (MDLM-OWT)
  dtype: Dtype = jnp.float32
  remat: bool = False
  rope_base: float = 10000.0
  attention_impl: str = "auto"

  def __post_init__(self):
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ValueError(f"width {self.width} must split into {self.num_heads} heads of an "
                       "even dimension (rotary embeddings)")
    if self.num_input_states < self.vocab_size:
      raise ValueError("num_input_states must be at least vocab_size")
    if self.attention_impl not in transformer.ATTENTION_IMPLS:
      raise ValueError(f"attention impl must be one of {transformer.ATTENTION_IMPLS}")


def config_from(model_cfg: ml_collections.ConfigDict, vocab_size: int,
                num_input_states: int, max_length: int) -> DiTConfig:
  """A ``DiTConfig`` from a validated ``config.model`` (size preset + overrides)."""
  layers, width, heads = transformer.SIZES[model_cfg.size]
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  return DiTConfig(
      vocab_size=vocab_size, num_input_states=num_input_states, max_length=max_length,
      num_layers=model_cfg.get("num_layers") or layers,
      width=model_cfg.get("width") or width,
      num_heads=model_cfg.get("num_heads") or heads,
      cond_width=model_cfg.get("cond_width", 128), mlp_ratio=model_cfg.get("mlp_ratio", 4),
      dropout=model_cfg.get("dropout", 0.0),
      time_conditioning=bool(model_cfg.get("time_conditioning", True)),
      dtype=dtypes[model_cfg.dtype], remat=model_cfg.get("remat", False),
      attention_impl=model_cfg.get("attention_impl", "auto") or "auto")


def timestep_embedding(sigma, dim: int = FREQ_DIM, max_period: float = 10000.0):
  """GLIDE's sinusoid of the raw noise level: ``[batch] -> [batch, dim]`` float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


class LayerNorm(nn.Module):
  """The peers' LayerNorm: no bias, a weight, statistics in float32, epsilon 1e-5."""

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + LN_EPS) * w).astype(x.dtype)


class DiTBlock(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x, c, deterministic: bool):
    cfg = self.cfg
    d, h = cfg.width, cfg.num_heads
    dense = lambda n, name, bias=True, **kw: nn.Dense(n, use_bias=bias, dtype=cfg.dtype,
                                                      name=name, **kw)
    mod = dense(6 * d, "adaLN_modulation", kernel_init=nn.initializers.zeros)(c)
    sh1, sc1, g1, sh2, sc2, g2 = jnp.split(mod, 6, -1)
    y = transformer.modulate(LayerNorm(name="norm1")(x), sh1, sc1)
    qkv = dense(3 * d, "attn_qkv", bias=False)(y).reshape(x.shape[:2] + (3, h, d // h))
    qk = transformer.rotary(qkv[:, :, :2], cfg.rope_base)
    att = transformer.attention(qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2], causal=False,
                                impl=cfg.attention_impl)
    y = dense(d, "attn_out", bias=False)(att.reshape(x.shape[:2] + (d,)))
    x = x + g1[:, None] * nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    y = transformer.modulate(LayerNorm(name="norm2")(x), sh2, sc2)
    y = dense(cfg.mlp_ratio * d, "mlp_0")(y)
    y = dense(d, "mlp_2")(nn.gelu(y, approximate=True))
    x = x + g2[:, None] * nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    return transformer.constrain_batch(x)


class DiT(nn.Module):
  """Denoiser ``(x_t [batch, length], sigma_bar [batch]) -> logits [batch, length, V]``.

  ``x_t`` holds ids ``< num_input_states`` (the mask id ``V`` of the absorbing process
  is input-only). The logits are the backbone's rows of the clean tokens (module
  docstring).
  """

  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_t, sigma_bar, deterministic: bool = True):
    cfg = self.cfg
    if x_t.ndim != 2:
      raise ValueError(f"x_t must be [batch, length], got shape {x_t.shape}")
    if x_t.shape[1] > cfg.max_length:
      raise ValueError(f"sequence length {x_t.shape[1]} exceeds the model's max_length "
                       f"{cfg.max_length}")
    sigma = jnp.broadcast_to(jnp.asarray(sigma_bar, jnp.float32), x_t.shape[:1])
    if not cfg.time_conditioning:
      sigma = jnp.zeros_like(sigma)
    table = self.param("vocab_embed", nn.initializers.normal(0.02),
                       (cfg.num_input_states, cfg.width))
    x = transformer.constrain_batch(jnp.take(table, x_t, axis=0).astype(cfg.dtype))
    c = nn.Dense(cfg.cond_width, name="sigma_map_0")(timestep_embedding(sigma))
    c = nn.Dense(cfg.cond_width, name="sigma_map_2")(nn.silu(c))
    c = nn.silu(c).astype(cfg.dtype)
    block = nn.remat(DiTBlock, static_argnums=(3,)) if cfg.remat else DiTBlock
    for i in range(cfg.num_layers):
      x = block(cfg, name=f"blocks_{i}")(x, c, deterministic)
    shift, scale = jnp.split(nn.Dense(2 * cfg.width, dtype=cfg.dtype,
                                      kernel_init=nn.initializers.zeros,
                                      name="final_adaLN_modulation")(c), 2, -1)
    y = transformer.modulate(LayerNorm(name="norm_final")(x), shift, scale)
    logits = nn.Dense(cfg.num_input_states, dtype=cfg.dtype,
                      kernel_init=nn.initializers.zeros, name="final_linear")(y)
    return transformer.constrain_batch(logits[..., :cfg.vocab_size])

"""Model builders from configs."""

from tcsm_jax.models import dit
from tcsm_jax.models.dit import DiT, DiTConfig
from tcsm_jax.models.transformer import (CausalTransformer, DiffusionTransformer,
                                         TransformerConfig, config_from, count_params)


def build_denoiser(config, vocab_size: int, num_states: int):
  """The diffusion denoiser of ``config.model`` for a process with ``num_states``:
  the project's ``DiffusionTransformer`` (``model.arch = diffusion``) or the
  MDLM/SEDD/DUO ``DiT`` (``model.arch = dit``). Both map ``(x_t [b, L], sigma_bar [b])``
  to ``[b, L, V]`` logits over clean tokens."""
  if config.model.arch == "dit":
    return DiT(dit.config_from(config.model, vocab_size=vocab_size,
                               num_input_states=num_states, max_length=config.data.seq_len))
  cfg = config_from(config.model, vocab_size=vocab_size, num_input_states=num_states,
                    max_length=config.data.seq_len)
  return DiffusionTransformer(cfg)


def build_causal(config, vocab_size: int) -> CausalTransformer:
  """A causal model of ``config.model``; its input has a BOS row (``vocab_size``)."""
  cfg = config_from(config.model, vocab_size=vocab_size, num_input_states=vocab_size + 1,
                    max_length=config.data.seq_len, causal=True)
  return CausalTransformer(cfg)


__all__ = ["CausalTransformer", "DiT", "DiTConfig", "DiffusionTransformer", "TransformerConfig",
           "build_causal", "build_denoiser", "count_params"]

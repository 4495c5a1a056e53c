"""Model builders from configs."""

from tcsm_jax.models.transformer import (CausalTransformer, DiffusionTransformer,
                                         TransformerConfig, config_from, count_params)


def build_denoiser(config, vocab_size: int, num_states: int) -> DiffusionTransformer:
  """The diffusion denoiser of ``config.model`` for a process with ``num_states``."""
  cfg = config_from(config.model, vocab_size=vocab_size, num_input_states=num_states,
                    max_length=config.data.seq_len)
  return DiffusionTransformer(cfg)


def build_causal(config, vocab_size: int) -> CausalTransformer:
  """A causal model of ``config.model``; its input has a BOS row (``vocab_size``)."""
  cfg = config_from(config.model, vocab_size=vocab_size, num_input_states=vocab_size + 1,
                    max_length=config.data.seq_len, causal=True)
  return CausalTransformer(cfg)


__all__ = ["CausalTransformer", "DiffusionTransformer", "TransformerConfig",
           "build_causal", "build_denoiser", "count_params"]

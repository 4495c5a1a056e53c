"""tcsm_jax: discrete diffusion trained with Target Concrete Score Matching."""

__version__ = "0.1.0"

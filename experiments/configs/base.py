"""Base config: every configurable key with its default.

The schema lives in ``tcsm_jax.training.config.default_config`` so that library code can
validate configs; start new configs from ``get_config()`` here.
"""

from tcsm_jax.training.config import default_config


def get_config():
  return default_config()

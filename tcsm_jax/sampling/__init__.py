"""Samplers of the reverse chain (``tj.sampling``).

* ``draws``: exact categorical and Bernoulli draws (down to ``2^-105``), and ``gumbel32``;
* ``steps``: the reverse-step laws all samplers share (analytic, Euler, absorbing
  unmask/remask) and the denoiser's law with temperature, top-p and guidance tilts;
* ``samplers``: ``sample`` / ``jit_sampler`` over a time grid (``euler``, ``analytic``,
  ``ancestral``, ``remdm``) or over events (``first_hitting``); prompts and infilling;
* ``remask``: ReMDM's ``cap`` / ``rescale`` / ``loop`` schedules;
* ``first_hitting``: the exact event-driven sampler of the absorbing process;
* ``adaptive``: confidence-ranked unmasking (fixed k, entropy bound, threshold);
* ``long``: semi-autoregressive generation past the training length.
"""

from tcsm_jax.sampling import adaptive, draws, first_hitting, long, remask, steps  # noqa: F401
from tcsm_jax.sampling.samplers import (SAMPLERS, STARTS, _cached_model_log_probs,  # noqa: F401
                                        ancestral_cache_buckets, clamp_arrays,
                                        clamp_from_template, jit_clamped_sampler,
                                        jit_sampler, sample,
                                        start_state, validate)
from tcsm_jax.sampling.steps import (model_log_probs_fn, reverse_transition_log_probs,  # noqa: F401
                                     top_p_filter)

"""tcsm_jax: discrete diffusion trained with Target Concrete Score Matching.

``import tcsm_jax as tj`` gives the stable public API:

Core math (pure, jittable functions; shapes in each docstring)
  tj.processes     Uniform, Absorbing, Dense(Q): kernels, marginals, forward sampling
  tj.schedules     noise schedules t -> (sigma_bar, d sigma_bar / dt)
  tj.divergences   Bregman divergences (gkl, kl, lsif, itakura_saito)
  tj.scores        concrete scores, denoiser posterior, path identity
  tj.losses        TCSM score/distribution forms, masked ELBO, SEDD score entropy
  tj.hamming       the score form on the 2-Hamming neighbourhood (pair blocks)
  tj.exact         exact quantities by enumeration (small spaces: tests, notebooks)
Built on the core
  tj.objective     time sampling + corruption + loss from a config
  tj.likelihood    NLL upper bound (ELBO) with standard error
  tj.sampling      exact draws; analytic, ancestral, first-hitting, ReMDM, Euler samplers
  tj.targets       teachers as clean-space targets: masked LM, AR exact/Top-K/Taylor
  tj.quality       generative perplexity, unigram entropy
Runs
  tj.default_config()             every config key with its default
  tj.build(config, dataset=None)  the Experiment (data, process, schedule, model, losses)
  tj.train(config, workdir)       train (or resume) a run; returns the last scalars
  tj.load_run(workdir)            config, experiment and parameters of a trained run
  tj.errors                       UserError and its kinds (what the binaries print)
"""

from tcsm_jax import (divergences, errors, exact, fs, hamming, likelihood, losses,
                      objective, processes, quality, sampling, schedules, scores, targets)
from tcsm_jax import posttrain  # noqa: F401  (registers teachers and fine-tuning)
from tcsm_jax.training.config import default_config
from tcsm_jax.training.experiment import Experiment, build
from tcsm_jax.training.restore import Run, load_run
from tcsm_jax.training.trainer import train_and_evaluate as train

__version__ = "0.2.0"

__all__ = ["Experiment", "Run", "build", "default_config", "divergences", "errors",
           "exact", "fs", "hamming", "likelihood", "load_run", "losses", "objective", "processes",
           "quality", "sampling", "schedules", "scores", "targets", "train"]

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Parametric targets and reward fine-tuning
#
# *This notebook is a jupytext percent-format `.py` file (the reviewed source of
# truth). Open it in Jupyter with jupytext installed, or convert it:
# `jupytext --to notebook notebooks/03_targets_and_finetuning.py`.
# `tests/test_notebooks.py` runs it top to bottom (trimmed with `TCSM_NB_QUICK=1`).*
#
# TCSM's target does not have to be the data. Any clean-space model that gives the
# conditionals `log p(x^i = y | x^{-i})` (equivalently, its concrete score on the
# 1-Hamming neighbourhood) defines a target at every noise level through the path
# identity (notebook 01). Here:
#
# 1. two teachers from `tj.targets`: a masked-LM (an absorbing diffusion model's
#    leave-one-out conditionals) and an autoregressive model (exact, Top-K and
#    first-order Taylor neighbour ratios), composed into `losses.tcsm_loss` through
#    `target_log_cond`;
# 2. reward fine-tuning of a trained model toward `p_ref(x) exp(r(x) / beta)` with a
#    plain Python reward function, and a sweep over `beta`.
#
# Models are tiny and briefly trained; the numbers show the mechanics, not quality.

# %%
import os
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

if "inline" not in matplotlib.get_backend():
  matplotlib.use("Agg")            # no display: run as a script or in a test
import matplotlib.pyplot as plt

import tcsm_jax as tj
from tcsm_jax import objective
from tcsm_jax.data import pipeline
from tcsm_jax.posttrain import reward as reward_lib

QUICK = os.environ.get("TCSM_NB_QUICK") == "1"   # the test suite's trimmed run
_here = [pathlib.Path.cwd(), pathlib.Path(globals().get("__file__", ".")).resolve()]
REPO = next(p for h in _here for p in [h, *h.parents]
            if (p / "experiments" / "configs").is_dir())
sys.path.insert(0, str(REPO))
# Workdirs of this notebook: a fresh temporary directory (under $TCSM_NB_WORKDIR if set).
WORK = pathlib.Path(tempfile.mkdtemp(prefix="tcsm_nb03_",
                                     dir=os.environ.get("TCSM_NB_WORKDIR") or None))
print("jax", jax.__version__, jax.devices(), "| quick" if QUICK else "| full",
      "| workdirs in", WORK)

# %% [markdown]
# ## 0. Two small trained models
#
# A causal (AR) transformer and an absorbing diffusion model on the bundled corpus,
# trained with `tj.train` (what `python -m experiments.train` runs) on 16-character
# chunks. The diffusion model is both the masked-LM teacher and, in section 2, the
# reference that fine-tuning starts from.

# %%
from experiments.configs import kjv_tiny

L = 16
TEACH_STEPS = 12 if QUICK else 300


def small_config(arch):
  cfg = kjv_tiny.get_config()
  cfg.model.arch = arch
  cfg.data.seq_len = L
  cfg.model.num_layers = 1 if QUICK else 2
  cfg.model.width = 32 if QUICK else 64
  cfg.model.num_heads = 2
  cfg.model.cond_width = 32
  cfg.train.batch_size = 16 if QUICK else 64
  cfg.train.num_steps = TEACH_STEPS
  cfg.train.log_every = TEACH_STEPS
  cfg.train.eval_every = TEACH_STEPS
  cfg.train.eval_batches = 1 if QUICK else 4
  cfg.train.checkpoint_every = TEACH_STEPS
  cfg.train.ema_decay = 0.9 if QUICK else 0.98
  cfg.optim.lr = 3e-3
  cfg.optim.warmup_steps = 4 if QUICK else 30
  return cfg


runs = {}
for arch in ("causal", "diffusion"):
  t0 = time.time()
  out = tj.train(small_config(arch), str(WORK / arch))
  runs[arch] = tj.load_run(str(WORK / arch))
  print(f"{arch:>9}: {TEACH_STEPS} steps in {time.time() - t0:.0f} s, validation "
        f"NLL{' bound' if arch == 'diffusion' else ''} {out['eval/nll_bound']:.3f} "
        "nats/char")
ar, ref = runs["causal"], runs["diffusion"]
# tj.load_run places the parameters on a one-device mesh (committed NamedSharding
# arrays). A jitted function compiles again for every new combination of input
# shardings, so make them plain arrays like freshly computed ones: they then mix with
# the freshly initialized correction of section 2 without extra compiles.
for r in (ar, ref):
  r.params = jax.tree.map(jnp.asarray, jax.device_get(r.params))
ds, proc, sched = ref.experiment.dataset, ref.experiment.process, ref.experiment.schedule
V = ds.vocab_size
x0 = jnp.asarray(next(pipeline.eval_batches(ds.validation, L, 8, 1)))
print("x0[0] =", repr(ds.decode(np.asarray(x0[0]))))

# %% [markdown]
# ## 1. Teachers as targets
#
# A *target function* maps clean tokens `x0 [b, L]` to `[b, L, V]` log-conditionals
# (up to a constant per position). For an AR model `p_AR`, the neighbour log-ratios
# `log p_AR(x^{i<-y}) - log p_AR(x)`:
#
# * `exact`: `L * V` sequence evaluations (ground truth, small `V` and `L` only);
# * `top_k`: only the `K` most likely replacements under the teacher's next-token
#   distribution (`-inf` elsewhere): `L * K` evaluations;
# * `taylor`: first order in the one-hot input: one forward and backward pass.
#
# The parameters are arguments of the jitted functions (not closed-over constants).
# `approximation_error` compares each with the exact ratios: Top-K's kept ratios are
# exact but it gives no mass to the other neighbours (so its KL is infinite; "mass
# covered" says how much it keeps), Taylor keeps every neighbour with approximate
# values. The masked LM is another model altogether, so its "error" is a disagreement.

# %%
K = 4
ar_model = ar.experiment.model
ar_targets = {mode: jax.jit(lambda params, x, mode=mode: tj.targets.ar_teacher(  # top_k_tail
    ar_model, params, mode, top_k=K)(x, jax.random.PRNGKey(0))) for mode in tj.targets.MODES}
mlm_target = jax.jit(lambda params, x: tj.targets.mlm_teacher(
    ref.experiment.apply_fn, params, proc.mask_id)(x))

targets = {f"AR {m}": np.asarray(fn(ar.params, x0)) for m, fn in ar_targets.items()}
targets["masked LM"] = np.asarray(mlm_target(ref.params, x0))
exact_ratios = targets["AR exact"]

# Exact AR ratios are the conditionals of the AR model's joint: check one position.
i, y = 5, 3
nb = x0.at[:, i].set(y)
lp = lambda t: tj.targets.ar_log_prob_fn(ar_model, ar.params)(t)
np.testing.assert_allclose(exact_ratios[:, i, y], lp(nb) - lp(x0), atol=1e-4)

errors = {name: tj.targets.approximation_error(jnp.asarray(exact_ratios),
                                               jnp.asarray(t))
          for name, t in targets.items() if name != "AR exact"}
for name, err in errors.items():
  print(f"{name:>10}: KL(exact || approx) {float(err['kl']):.4f}, mass covered "
        f"{float(err['mass_covered']):.3f}, |log-ratio error| on kept "
        f"{float(err['mae_kept']):.4f}")
assert float(errors["AR top_k"]["mae_kept"]) < 1e-3        # kept ratios are exact

fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3))
for ax, (name, t) in zip(axes, targets.items()):
  ax.imshow(np.asarray(jax.nn.softmax(jnp.asarray(t[0]), -1)).T, aspect="auto",
            cmap="magma", vmin=0, vmax=1)
  ax.set_title(name, fontsize=9)
  ax.set_xlabel("position")
axes[0].set_ylabel("token y")
fig.suptitle("teacher conditionals p(x^i = y | x^{-i}) on one validation sequence")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Composed into the loss.** `losses.tcsm_loss(..., target_log_cond=t)` turns the
# clean-space target into the denoising-posterior target at the noise level of `x_t`
# (without it, the target is the data, known only through the sample `x0`). Below:
# the loss of a student (here the reference model itself) against each teacher and
# its gradient norm, from one jitted function that takes the target as an argument.

# %%
student = ref.experiment.model


def student_loss(params, x0, target_log_cond, key):
  k_t, k_x = jax.random.split(key)
  t = objective.sample_times(k_t, x0.shape[0])
  sigma, dsigma = sched(t)
  x_t = proc.sample_forward(k_x, x0, sigma)
  logits = student.apply({"params": params}, x_t, sigma)
  per_pos = tj.losses.tcsm_loss(logits, x0, x_t, sigma, proc, form="score",
                                divergence="gkl", target_log_cond=target_log_cond)
  w = tj.losses.time_weight("masked_elbo", sigma, dsigma)
  return jnp.mean(w * per_pos.sum(-1)) / x0.shape[1]


loss_and_grad = jax.jit(jax.value_and_grad(student_loss))
for name, t in targets.items():
  loss, g = loss_and_grad(ref.params, x0, jnp.asarray(t), jax.random.PRNGKey(0))
  print(f"{name:>10}: loss {float(loss):8.4f}   grad norm "
        f"{float(optax.global_norm(g)):.4f}")
  assert np.isfinite(float(loss))

# %% [markdown]
# **The same through a config.** `teacher.kind=ar|mlm`, `teacher.workdir`,
# `teacher.mode` and `loss.teacher_weight` (1 = teacher only, in between a mixture with
# the data target) make `tj.build` load the teacher; `tj.train` then passes its
# parameters to the jitted step as an argument (`Experiment.frozen`). On the command
# line: `python -m experiments.train ... --config.teacher.kind=ar
# --config.teacher.workdir=T --config.loss.teacher_weight=0.5`, and
# `experiments.compare_targets` trains variants side by side.

# %%
cfg_t = small_config("diffusion")
cfg_t.teacher.kind, cfg_t.teacher.workdir = "ar", str(WORK / "causal")
cfg_t.teacher.mode, cfg_t.teacher.top_k = "top_k", K
cfg_t.loss.teacher_weight = 0.5
exp_t = tj.build(cfg_t, ds)
from_config = jax.jit(exp_t.target_fn)(exp_t.frozen, x0)
np.testing.assert_allclose(np.asarray(from_config), targets["AR top_k"], atol=1e-5)
print("tj.build(config).target_fn == targets.ar_teacher(..., 'top_k')")

# %% [markdown]
# ## 2. Reward fine-tuning with a Python reward
#
# Target: `p_ref(x) exp(r(x) / beta)`. Its concrete score is the reference's times
# `exp((r(x^{i<-y}) - r(x)) / beta)`, so per position the target posterior is the
# reference posterior tilted by the reward differences on the neighbourhood
# (`posttrain/reward.py`). The fine-tuned model is the frozen reference's logits plus a
# learned correction whose output head starts at zero: training starts exactly at the
# reference, and `beta -> inf` leaves it there.
#
# The reward is a plain Python function of the decoded text (here: the number of
# vowels). `reward.python_reward` makes it a jittable `tokens [n, L] -> [n]` via a
# host callback, and `sequence_reward_deltas(..., 'exact')` evaluates it on all `L * V`
# neighbours. (`experiments.finetune` trains with a project-trained classifier reward
# or per-token weights from the config instead.)

# %%
def vowels(text: str) -> float:
  return float(sum(text.count(c) for c in "aeiou"))


reward_fn = reward_lib.python_reward(vowels, ds.decode)
deltas_fn = lambda x: reward_lib.sequence_reward_deltas(reward_fn, x, V, "exact")
rewards_of = jax.jit(reward_fn)
print("rewards of the validation batch:", np.asarray(rewards_of(x0)))

# A count of characters is a per-token reward: the exact differences must agree with
# the closed form of reward.token_reward_deltas.
w = np.zeros(V, np.float32)
w[np.asarray(ds.encode("aeiou"))] = 1.0
np.testing.assert_allclose(np.asarray(jax.jit(deltas_fn)(x0[:2])),
                           reward_lib.token_reward_deltas(w, x0[:2]), atol=1e-6)
print("Python-reward neighbour differences == per-token closed form")

# %% [markdown]
# The fine-tuning step, written here from the library's pieces: `beta` is an argument
# of the jitted step, so one compile serves the whole sweep.

# %%
ref_model, ref_params = ref.experiment.model, ref.params
corr_model = ref_model                 # same architecture, its own parameters
FT_STEPS = 6 if QUICK else 150
BATCH = 8 if QUICK else 32
optimizer = optax.adam(1e-3)


def ft_loss(corr_params, ref_params, x0, key, beta):
  k_t, k_x = jax.random.split(key)
  sigma, _ = sched(objective.sample_times(k_t, x0.shape[0]))
  x_t = proc.sample_forward(k_x, x0, sigma)
  ref_logits = ref_model.apply({"params": ref_params}, x_t, sigma)
  corr_logits = corr_model.apply({"params": corr_params}, x_t, sigma)
  deltas = jax.lax.stop_gradient(deltas_fn(x0))
  per_pos = reward_lib.reward_loss(corr_logits, ref_logits, x0, x_t, sigma, proc, deltas,
                                   beta, form="score", divergence="gkl")
  return jnp.mean(per_pos.sum(-1)) / x0.shape[1]


@jax.jit
def ft_step(corr_params, opt_state, ref_params, x0, key, beta):
  loss, g = jax.value_and_grad(ft_loss)(corr_params, ref_params, x0, key, beta)
  updates, opt_state = optimizer.update(g, opt_state, corr_params)
  return optax.apply_updates(corr_params, updates), opt_state, loss


def apply_ft(params, x_t, sigma):
  """Reference logits + correction (what a fine-tuned run's apply_fn computes)."""
  ref_logits = ref_model.apply({"params": params["reference"]}, x_t, sigma)
  return ref_logits + corr_model.apply({"params": params["correction"]}, x_t, sigma)


N_SAMPLES, SAMPLE_STEPS = (8, 8) if QUICK else (64, 32)
sample_ft = tj.sampling.jit_sampler(apply_ft, proc, sched, (N_SAMPLES, L),
                                    steps=SAMPLE_STEPS)
ref_bound = jax.jit(lambda params, x, key: tj.likelihood.nll_bound(
    key, lambda xt, s: ref_model.apply({"params": params}, xt, s), x, proc, sched,
    num_t=4)["bound"])
# The correction starts as a copy of the reference network with its output head
# zeroed: it outputs exactly 0, so fine-tuning starts at the reference.
corr_init = jax.tree.map(jnp.copy, ref_params)
corr_init["trunk"]["head"] = jax.tree.map(jnp.zeros_like, corr_init["trunk"]["head"])
sampler = pipeline.ChunkSampler(ds.train, L, BATCH, seed=1)


def evaluate(corr_params, key):
  """Mean reward of samples and their NLL bound under the reference (nats/char)."""
  toks, _ = sample_ft({"reference": ref_params, "correction": corr_params}, key)
  r = np.asarray(rewards_of(toks))
  nll = np.asarray(ref_bound(ref_params, toks, key)) / L
  return r.mean(), nll.mean(), ds.decode(np.asarray(toks[:2]))


BETAS = [1.0, 0.3] if QUICK else [2.0, 1.0, 0.5, 0.25]
sweep = {"inf (reference)": evaluate(corr_init, jax.random.PRNGKey(5))}
curves = {}
for beta in BETAS:
  corr, opt_state, losses_ = corr_init, optimizer.init(corr_init), []
  t0 = time.time()
  for i in range(FT_STEPS):
    corr, opt_state, loss = ft_step(corr, opt_state, ref_params,
                                    jnp.asarray(sampler.batch(i)),
                                    jax.random.PRNGKey(100 + i), beta)
    losses_.append(float(loss))
  curves[beta] = losses_
  sweep[beta] = evaluate(corr, jax.random.PRNGKey(5))
  print(f"beta {beta}: {FT_STEPS} steps in {time.time() - t0:.1f} s, loss "
        f"{losses_[0]:.4f} -> {losses_[-1]:.4f}")

for beta, (r, nll, texts) in sweep.items():
  print(f"beta {beta!s:>15}: mean vowels {r:5.2f} / {L}, reference NLL bound of "
        f"samples {nll:.3f} nats/char  e.g. {texts[0]!r}")
  assert np.isfinite(r) and np.isfinite(nll)

# %% [markdown]
# **The beta sweep.** Smaller `beta` puts more weight on the reward: samples carry more
# vowels, and drift away from what the reference finds likely (its NLL bound of the
# samples grows): the reward/fidelity trade-off. `python -m experiments.reward_sweep`
# runs the same sweep with the classifier reward through the training binary.

# %%
labels = list(sweep)
xs = np.arange(len(labels))
fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.3))
for beta, c in curves.items():
  a1.plot(c, label=f"beta={beta}")
a1.set_xlabel("fine-tuning step")
a1.set_ylabel("TCSM loss")
a1.set_yscale("symlog", linthresh=1e-3)
a1.legend(fontsize=7)
a2.plot(xs, [sweep[k][0] for k in labels], "o-")
a2.set_ylabel(f"mean vowels per {L} chars")
a3.plot(xs, [sweep[k][1] for k in labels], "o-", color="C1")
a3.set_ylabel("reference NLL bound of samples")
for a in (a2, a3):
  a.set_xticks(xs, [str(k).split()[0] for k in labels])
  a.set_xlabel("beta")
fig.tight_layout()
plt.show()

if not QUICK:   # the effect is visible only after real training
  assert sweep[BETAS[-1]][0] > sweep["inf (reference)"][0]

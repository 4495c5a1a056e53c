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
# # 01 · Concrete scores and TCSM losses as pure functions
#
# *This notebook is a jupytext percent-format `.py` file (the reviewed source of
# truth). Open it in Jupyter with jupytext installed, or convert it:
# `jupytext --to notebook notebooks/01_concrete_scores.py`. `tests/test_notebooks.py`
# runs it top to bottom.*
#
# What's here, all on state spaces small enough to enumerate (`tj.exact`):
#
# 1. the forward processes `Uniform`, `Absorbing` and `Dense(Q)`: rate matrices,
#    kernels `expm(sigma_bar Q)` and marginals over time;
# 2. the **concrete score** (ratios `p(x^{i<-y}) / p(x)` on the 1-Hamming
#    neighbourhood) and the **path identity**: the posterior's concrete score is the
#    clean-space target's times a kernel ratio;
# 3. the TCSM **score** and **distribution** losses, and Prop. 3
#    (`V * score_gKL = V * KL + IS`), checked numerically;
# 4. the special cases: the MDLM/MD4 masked ELBO and SEDD's score entropy;
# 5. `jax.grad` through a loss and `jax.vmap` over noise levels (an exact NLL from
#    the Bayes-optimal denoiser).
#
# Conventions (README): `x0` is clean data, time `t = 0` clean and `t = 1` noise,
# functions of the process take the integrated noise `sigma_bar` and
# `alpha = exp(-sigma_bar)` is the probability that a token is untouched.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

if "inline" not in matplotlib.get_backend():
  matplotlib.use("Agg")            # no display: run as a script or in a test
import matplotlib.pyplot as plt

import tcsm_jax as tj

QUICK = os.environ.get("TCSM_NB_QUICK") == "1"   # the test suite's trimmed run
np.set_printoptions(precision=4, suppress=True)
print("jax", jax.__version__, "devices", jax.devices(), "quick" if QUICK else "full")

# %% [markdown]
# ## 1. Forward processes
#
# A process is a continuous-time Markov chain on one token with rate matrix `Q` (row
# convention: `Q[i, j]` is the rate of jumping from `i` to `j`). Every position of a
# sequence is corrupted independently. `Uniform(V)` jumps to a uniformly random token;
# `Absorbing(V)` adds a mask state `V`; `Dense(Q)` takes any valid rate matrix (here a
# "nearest neighbour" chain on a ring).

# %%
V = 4
uniform = tj.processes.Uniform(V)
absorbing = tj.processes.Absorbing(V)
ring = np.zeros((V, V))
for i in range(V):
  ring[i, (i + 1) % V] = ring[i, (i - 1) % V] = 0.5
ring -= np.diag(ring.sum(1))
dense = tj.processes.Dense(ring)
procs = {"Uniform": uniform, "Absorbing": absorbing, "Dense (ring)": dense}

for name, proc in procs.items():
  print(f"{name}: {proc.num_states} states, vocab {proc.vocab_size}, "
        f"mask {proc.mask_id}\nQ =\n{np.asarray(proc.rate_matrix())}")

# %% [markdown]
# The kernels `P = expm(sigma_bar Q)` (`P[i, j] = p(x_t = j | x0 = i)`) are closed
# forms for the structured processes; `tj.exact.kernel` computes `expm` with scipy in
# float64, independently. They agree:

# %%
for name, proc in procs.items():
  for sigma in (0.1, 1.0, 5.0):
    np.testing.assert_allclose(np.asarray(proc.transition_matrix(sigma)),
                               tj.exact.kernel(proc, sigma), atol=2e-6)
print("closed-form kernels == scipy expm")

fig, axes = plt.subplots(3, 3, figsize=(9, 8.5))
for row, (name, proc) in enumerate(procs.items()):
  for col, sigma in enumerate((0.2, 1.0, 3.0)):
    ax = axes[row, col]
    ax.imshow(np.asarray(proc.transition_matrix(sigma)), vmin=0, vmax=1, cmap="viridis")
    ax.set_title(f"{name}, sigma_bar={sigma}", fontsize=9)
    ax.set_xlabel("x_t")
    ax.set_ylabel("x0")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Marginals over time.** A schedule maps `t` to `(sigma_bar(t), d sigma_bar/dt)`;
# with `log_linear`, `alpha(t) = 1 - (1 - eps) t`. Pushing a clean distribution `p0`
# over the `V` tokens through the kernel gives the marginal `p_t = p0 P(sigma_bar(t))`:
# uniform noise flattens it, absorbing noise moves mass to the mask, the ring chain
# diffuses to the neighbours first.

# %%
sched = tj.schedules.get("log_linear")
ts = jnp.linspace(0.0, 1.0, 101)
sigmas, dsigmas = sched(ts)
p0_token = np.array([0.6, 0.25, 0.1, 0.05])
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
for ax, (name, proc) in zip(axes, procs.items()):
  kern = np.asarray(proc.transition_matrix(sigmas))        # [T, S, S]
  marg = np.einsum("v,tvs->ts", p0_token, kern[:, :V, :])
  labels = [f"token {j}" for j in range(V)] + (["mask"] if proc.mask_id else [])
  ax.stackplot(np.asarray(ts), marg.T, labels=labels)
  ax.set_title(name)
  ax.set_xlabel("t")
axes[0].set_ylabel("p_t(x)")
axes[1].legend(loc="upper right", fontsize=7)        # the one with a mask
fig.tight_layout()
plt.show()

# Forward sampling follows the kernel (Monte Carlo check on 5000 draws, ~4 sigma).
x0 = jnp.zeros((5000, 1), jnp.int32)
for name, proc in procs.items():
  xt = proc.sample_forward(jax.random.PRNGKey(0), x0, 1.0)
  freq = np.bincount(np.asarray(xt).ravel(), minlength=proc.num_states) / xt.size
  np.testing.assert_allclose(freq, tj.exact.kernel(proc, 1.0)[0], atol=0.03)
print("forward samples follow the kernel")

# %% [markdown]
# ## 2. Concrete scores and the path identity
#
# Take a random distribution `p0` over all `V^L` sequences of length `L = 3` over
# `V = 3` tokens (27 sequences), corrupt it at noise `sigma_bar` and enumerate the
# exact posterior `p(x0 | x_t)` (`tj.exact.posterior`).
#
# The **concrete score** of `p0` at `x0` is the vector of ratios
# `p0(x0^{i<-y}) / p0(x0)` for every position `i` and replacement `y`: an array
# `[L, V]` per sequence, never a set of materialized neighbours. It depends only on
# the conditionals `p0(x^i = . | x^{-i})`.
#
# The **path identity** (`tj.scores`):
#
# `p(x0^{i<-y} | x_t) / p(x0 | x_t) = [p0(x0^{i<-y}) / p0(x0)] * [P(y, x_t^i) / P(x0^i, x_t^i)]`
#
# so a target known only in clean space (data, a teacher, a reward-tilted model)
# defines the target for the denoiser at every noise level.

# %%
v_small, length, sigma = 3, 3, 0.8
p0 = tj.exact.random_distribution(np.random.default_rng(0), v_small, length)
x0s = tj.exact.all_sequences(v_small, length)                    # [27, 3]
cond = tj.exact.conditionals(p0, v_small, length)                # [27, L, V]

for kind in ("uniform", "absorbing"):
  proc = tj.processes.get(kind, v_small)
  _, post = tj.exact.posterior(p0, proc, sigma, length)          # [Nt, N0]
  xts = tj.exact.all_sequences(proc.num_states, length)
  ti, ni = np.nonzero(post > 0)                                  # every (x_t, x0) pair
  x0, xt = jnp.asarray(x0s[ni]), jnp.asarray(xts[ti])
  target = jnp.asarray(np.log(cond[ni]), jnp.float32)            # log p0(x^i=.|x^-i)
  clean_score = tj.scores.clean_log_ratios(target, x0)           # log concrete score
  got = tj.scores.posterior_log_ratios(clean_score, proc, x0, xt, sigma)
  want = np.zeros((len(ti), length, v_small))                    # by enumeration
  for i in range(length):
    for y in range(v_small):
      nb = x0s[ni].copy()
      nb[:, i] = y
      want[:, i, y] = post[ti, tj.exact.index_of(nb, v_small)] / post[ti, ni]
  np.testing.assert_allclose(np.exp(np.asarray(got)), want, rtol=2e-4, atol=1e-7)
  print(f"{kind}: path identity holds on all {len(ti)} (x_t, x0) pairs")

print("example (absorbing): x0 =", x0s[ni[5]], " x_t =", xts[ti[5]],
      "\nposterior concrete score [L, V]:\n", want[5])

# %% [markdown]
# For the Bayes-optimal factorized denoiser (`tj.exact.true_denoiser`: the exact
# marginals `p(x0^i | x_t)`), `Process.noisy_log_score` gives the concrete score of the
# *noisy* marginal `p_t`, the quantity SEDD learns and the reverse rates use. Compare it
# with the enumerated `p_t(x^{i<-y}) / p_t(x)` (uniform process: every entry is used).

# %%
proc = uniform_small = tj.processes.Uniform(v_small)
denoiser = tj.exact.true_denoiser(p0, proc, length)
pt, _ = tj.exact.posterior(p0, proc, sigma, length)
xts = jnp.asarray(tj.exact.all_sequences(proc.num_states, length))
sig = jnp.full((len(xts),), sigma)
noisy = proc.noisy_log_score(denoiser(xts, sig), xts, sig)
np.testing.assert_allclose(np.exp(np.asarray(noisy)),
                           tj.exact.noisy_concrete_score(pt, proc.num_states, length),
                           rtol=2e-4)
print("noisy concrete score from the exact denoiser == enumeration")

# %% [markdown]
# ## 3. TCSM losses
#
# Per position, with `p` the model's posterior and `q` the target's:
#
# * **score form** `E_{x ~ q} (1/V) sum_y D(q(y)/q(x), p(y)/p(x))`: a Bregman divergence
#   between concrete scores around the centre `x`;
# * **distribution form** `sum_y D(q(y), p(y))`.
#
# `losses.score_loss(log_p, x, div, log_q=...)` evaluates the score form at one centre
# `x`; averaging it over `x ~ q` gives the expected loss. With the *data* target
# (`log_q=None`), `q` is known only through the sample `x`, and the estimator is
# unbiased up to a constant that does not depend on the model.

# %%
rng = np.random.default_rng(1)
Vp = 5
def rand_logp(shape):
  return jax.nn.log_softmax(jnp.asarray(rng.normal(size=shape), jnp.float32))

log_q = rand_logp((Vp,))
xs = jnp.arange(Vp)
q = np.exp(np.asarray(log_q, np.float64))

def expected(fn, log_p, div, exact_target):
  """E_{x ~ q} fn(log_p, x) by enumeration of the centre x."""
  lp = jnp.broadcast_to(log_p, (Vp, Vp))
  lq = jnp.broadcast_to(log_q, (Vp, Vp)) if exact_target else None
  return float(np.sum(q * np.asarray(fn(lp, xs, div, log_q=lq), np.float64)))

print(f"{'form':>12} {'div':>14} {'E[MC] - exact (3 models)':>34}")
for fn, form in ((tj.losses.score_loss, "score"),
                 (tj.losses.distribution_loss, "distribution")):
  for div in ("gkl", "kl", "lsif", "itakura_saito"):
    gaps = []
    for _ in range(3):
      log_p = rand_logp((Vp,))
      gaps.append(expected(fn, log_p, div, False) - expected(fn, log_p, div, True))
    np.testing.assert_allclose(gaps, gaps[0], atol=2e-4)
    print(f"{form:>12} {div:>14}   {np.round(gaps, 4)}  (constant in the model)")

# %% [markdown]
# **Prop. 3.** With exact targets, the score form with the generalized KL is the KL
# distribution form plus Itakura-Saito, on one scale (`losses.py` docstring, tested in
# `tests/test_losses.py`): with full support,
#
# `V * E_x[score_gKL] = V * KL(q || p) + IS(q, p)`, and also
# `V * E_x[score_IS] = V * KL + IS` and `score_KL = KL / V` pointwise.

# %%
for trial in range(3):
  log_p = rand_logp((Vp,))
  p = np.exp(np.asarray(log_p, np.float64))
  kl = float(np.sum(q * np.log(q / p)))
  isd = float(np.sum(q / p - np.log(q / p) - 1))
  score_gkl = expected(tj.losses.score_loss, log_p, "gkl", True)
  score_is = expected(tj.losses.score_loss, log_p, "itakura_saito", True)
  dist_kl = float(tj.losses.distribution_loss(log_p, jnp.array(0), "kl", log_q=log_q))
  print(f"V*score_gKL = {Vp * score_gkl:.6f}   V*KL + IS = {Vp * kl + isd:.6f}   "
        f"V*score_IS = {Vp * score_is:.6f}   dist_KL = {dist_kl:.6f}")
  np.testing.assert_allclose(Vp * score_gkl, Vp * kl + isd, rtol=1e-4)
  np.testing.assert_allclose(Vp * score_is, Vp * kl + isd, rtol=1e-4)
  np.testing.assert_allclose(dist_kl, kl, rtol=1e-4)
print("Prop. 3 holds")

# %% [markdown]
# With the data target the losses have closed forms per position: the generalized-KL
# score form is `-log p(x) + 1/(V p(x)) + (1/V) sum_y log p(y)` and the KL distribution
# form is the cross-entropy `-log p(x)`.

# %%
log_p = rand_logp((2, 6, Vp))
x = jnp.asarray(rng.integers(0, Vp, (2, 6)))
pp = np.exp(np.asarray(log_p, np.float64))
px = np.take_along_axis(pp, np.asarray(x)[..., None], -1)[..., 0]
np.testing.assert_allclose(tj.losses.score_loss(log_p, x, "gkl"),
                           -np.log(px) + 1 / (Vp * px) + np.log(pp).sum(-1) / Vp,
                           rtol=1e-5)
np.testing.assert_allclose(tj.losses.distribution_loss(log_p, x, "kl"), -np.log(px),
                           rtol=1e-5)
print("data-target closed forms hold")

# %% [markdown]
# ## 4. Special cases: masked ELBO and SEDD score entropy
#
# `losses.tcsm_loss` works on network logits `[batch, length, V]`, noisy tokens and the
# noise level. For the absorbing process:
#
# * the KL **distribution** form weighted by `time_weight('masked_elbo')`
#   `= dsigma / (exp(sigma_bar) - 1)` *is* the MDLM/MD4 continuous-time ELBO integrand;
# * SEDD's **denoising score entropy**, with the noisy-space score computed from the
#   same denoiser, equals it pointwise.

# %%
b, L6 = 4, 8
proc = tj.processes.Absorbing(6)
logits = jnp.asarray(rng.normal(size=(b, L6, 6)), jnp.float32)
x0 = jnp.asarray(rng.integers(0, 6, (b, L6)))
sigma = jnp.asarray([0.05, 0.6, 2.0, 7.0])
dsigma = jnp.asarray([1.0, 1.5, 3.0, 0.7])
xt = proc.sample_forward(jax.random.PRNGKey(2), x0, sigma)

elbo = tj.losses.masked_elbo(logits, x0, xt, sigma, dsigma, proc.mask_id)
tcsm_kl = tj.losses.tcsm_loss(logits, x0, xt, sigma, proc, form="distribution",
                              divergence="kl")
weighted = tj.losses.time_weight("masked_elbo", sigma, dsigma) * tcsm_kl.sum(-1)
log_p = tj.scores.model_log_probs(logits, proc, xt, sigma)
log_score = proc.noisy_log_score(log_p, xt, sigma)
sedd = tj.losses.score_entropy(log_score, x0, xt, sigma, dsigma, proc).sum(-1)
print("masked ELBO      ", np.asarray(elbo))
print("TCSM KL x weight ", np.asarray(weighted))
print("SEDD score entr. ", np.asarray(sedd))
np.testing.assert_allclose(elbo, weighted, rtol=1e-5)
np.testing.assert_allclose(sedd, elbo, rtol=1e-4, atol=1e-5)
print("masked ELBO == TCSM KL distribution form == SEDD score entropy")

# %% [markdown]
# ## 5. Gradients and `vmap` over noise levels
#
# Everything above is a pure function, so `jax.grad` goes through it. For the KL
# distribution form with the data target the gradient w.r.t. the logits is the
# cross-entropy gradient `softmax(logits) - onehot(x0)` at masked positions and zero
# at unmasked ones (their posterior is determined).

# %%
def loss_fn(logits):
  per_pos = tj.losses.tcsm_loss(logits, x0, xt, sigma, proc, form="distribution",
                                divergence="kl")
  return per_pos.sum()

g = jax.grad(loss_fn)(logits)
masked = np.asarray(xt == proc.mask_id)[..., None]
want = np.where(masked, jax.nn.softmax(logits) - jax.nn.one_hot(x0, 6), 0.0)
np.testing.assert_allclose(g, want, atol=1e-6)
print("grad of the KL distribution form = softmax - onehot at masked positions")

# The score form with the generalized KL has a different gradient (and variance).
g_score = jax.grad(lambda lg: tj.losses.tcsm_loss(lg, x0, xt, sigma, proc).sum())(logits)
print("score-form gradient norm", float(jnp.linalg.norm(g_score)),
      " distribution-form", float(jnp.linalg.norm(g)))

# %% [markdown]
# **`vmap` over noise levels: an exact likelihood.** For `V = 3`, `L = 2` we can
# enumerate every noisy sequence. The expected masked-ELBO integrand at time `t`,
# `E_{x_t ~ p(.|x0)} [integrand]`, is a function of `t` that `jax.vmap` evaluates on a
# whole quadrature grid at once. With the Bayes-optimal denoiser its integral plus
# the prior term is `-log p0(x0)` (up to the `L * eps * log V` slack of the schedule
# ending at `alpha(1) = eps`): the bound is tight.

# %%
v3, l2 = 3, 2
proc = tj.processes.Absorbing(v3)
p0 = tj.exact.random_distribution(np.random.default_rng(3), v3, l2, 1.0)
denoise = tj.exact.true_denoiser(p0, proc, l2)
xts = jnp.asarray(tj.exact.all_sequences(proc.num_states, l2))       # all 16 x_t

def expected_integrand(t, x0):
  """E_{x_t ~ p(.|x0)} of the masked-ELBO integrand at time t (exact)."""
  x0b = jnp.broadcast_to(x0, xts.shape)
  sig, dsig = sched(jnp.full((len(xts),), t))
  val = tj.likelihood.integrand(denoise(xts, sig), x0b, xts, sig, dsig, proc)
  lq = proc.transition_log_probs(x0b, sig)
  logq = jnp.take_along_axis(lq, xts[..., None], -1)[..., 0].sum(-1)
  return jnp.sum(jnp.where(logq > -jnp.inf, jnp.exp(logq) * val, 0.0))

n_nodes = 100 if QUICK else 400
nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
tq, wq = 0.5 * (nodes + 1), 0.5 * weights
curve = jax.jit(jax.vmap(expected_integrand, in_axes=(0, None)))

x0s = tj.exact.all_sequences(v3, l2)
prior = tj.likelihood.prior_term(jnp.asarray(x0s), proc, sched.sigma_bar(1.0))
fig, ax = plt.subplots(figsize=(6, 3.2))
for k, x0 in enumerate(x0s):
  vals = np.asarray(curve(jnp.asarray(tq, jnp.float32), jnp.asarray(x0)))
  bound = float(np.sum(wq * vals) + prior[k])
  nll = -np.log(p0[k])
  print(f"x0={x0}  bound {bound:.4f}  -log p0(x0) {nll:.4f}  gap {bound - nll:+.4f}")
  assert -3e-3 < bound - nll < l2 * 1e-3 * np.log(v3) + 3e-3 + (0.02 if QUICK else 0)
  if k < 4:
    ax.plot(tq, vals, label=f"x0={x0}")
ax.set_xlabel("t")
ax.set_ylabel("E[integrand]")
ax.set_yscale("log")
ax.legend(fontsize=7)
ax.set_title("masked-ELBO integrand of the Bayes denoiser")
fig.tight_layout()
plt.show()

# %% [markdown]
# Next: `02_train_sample_evaluate.py` trains a transformer denoiser with these losses,
# samples from it and evaluates its NLL bound.

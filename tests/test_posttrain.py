"""Reward and preference fine-tuning on a tiny enumerable space."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tcsm_jax import exact, processes
from tcsm_jax.posttrain import reward

V, L, SIGMA = 3, 2, 0.8


def _product(seed):
  m = np.random.default_rng(seed).dirichlet(np.ones(V) * 2, size=L)
  x0s = exact.all_sequences(V, L)
  return m, np.prod(m[np.arange(L), x0s], -1)


def _tilted(p_ref, w, beta):
  x0s = exact.all_sequences(V, L)
  r = np.asarray(w)[x0s].sum(-1)
  p = p_ref * np.exp(r / beta)
  return p / p.sum()


def _fit_correction(p_ref, w, beta, form, div, steps=600):
  """Trains a free correction table c[x_t, L, V] on the expected TCSM reward loss."""
  proc = processes.Absorbing(V)
  den = exact.true_denoiser(p_ref, proc, L)
  xts = jnp.asarray(exact.all_sequences(proc.num_states, L))
  x0s = jnp.asarray(exact.all_sequences(V, L))
  jnt = exact.joint(p_ref, proc, SIGMA, L)                     # [N0, Nt] proposal = ref
  jnt = jnp.asarray(jnt, jnp.float32)
  n0, nt = jnt.shape
  xt_b = jnp.broadcast_to(xts[None], (n0, nt, L)).reshape(-1, L)
  x0_b = jnp.broadcast_to(x0s[:, None], (n0, nt, L)).reshape(-1, L)
  wts = jnt.reshape(-1)
  ok = wts > 0
  # Impossible (x0, x_t) pairs get a consistent stand-in with weight 0.
  x0_b = jnp.where(ok[:, None], x0_b, jnp.where(xt_b == proc.mask_id, 0, xt_b))
  sig = jnp.full((len(wts),), SIGMA)
  ref_logits = den(xt_b, sig)
  deltas = reward.token_reward_deltas(w, x0_b)

  def loss(c):
    corr = c[_idx(xt_b, proc.num_states)]
    per = reward.reward_loss(corr, ref_logits, x0_b, xt_b, sig, proc, deltas, beta,
                             form, div)
    return jnp.sum(wts * per.sum(-1))

  c = jnp.zeros((nt, L, V))
  opt = optax.adam(0.05)
  st = opt.init(c)
  step = jax.jit(lambda c, st: _upd(opt, loss, c, st))
  for _ in range(steps):
    c, st = step(c, st)
  return proc, den, c, xts, loss


def _idx(t, s):
  return jnp.sum(t * (s ** jnp.arange(t.shape[-1] - 1, -1, -1)), -1)


def _upd(opt, loss, c, st):
  g = jax.grad(loss)(c)
  u, st = opt.update(g, st, c)
  return optax.apply_updates(c, u), st


@pytest.mark.parametrize("form,div", [("score", "gkl"), ("distribution", "kl")])
def test_reward_finetuning_converges_to_exact_tilted_distribution(form, div):
  _, p_ref = _product(0)
  w, beta = np.array([0.0, 1.0, -0.5]), 0.5
  proc, den, c, xts, _ = _fit_correction(p_ref, w, beta, form, div)
  p_tilt = _tilted(p_ref, w, beta)
  # The fine-tuned posterior equals the exact posterior of the tilted distribution.
  want = exact.position_marginals(exact.posterior(p_tilt, proc, SIGMA, L)[1], V, L)
  sig = jnp.full((len(xts),), SIGMA)
  got = jax.nn.softmax(jnp.where(jnp.isfinite(den(xts, sig)), den(xts, sig) + c, -jnp.inf))
  pt = exact.posterior(p_ref, proc, SIGMA, L)[0]
  np.testing.assert_allclose(np.asarray(got)[pt > 0], want[pt > 0], atol=3e-3)
  # At full mask the model's marginals are the tilted marginals (not the reference's).
  full = exact.index_of(np.full((1, L), proc.mask_id), proc.num_states)[0]
  assert np.abs(np.asarray(got)[full] - exact.position_marginals(
      exact.posterior(p_ref, proc, SIGMA, L)[1], V, L)[full]).max() > 0.05


def test_infinite_beta_leaves_the_reference_unchanged():
  _, p_ref = _product(1)
  proc, den, c, xts, loss = _fit_correction(p_ref, np.array([0.0, 3.0, -2.0]), 1e9,
                                            "score", "gkl", steps=50)
  # The reference is already optimal: zero gradient, and training keeps it in place.
  assert float(jnp.abs(jax.grad(loss)(jnp.zeros_like(c))).max()) < 1e-6
  sig = jnp.full((len(xts),), SIGMA)
  ref = jax.nn.softmax(den(xts, sig))
  tuned = jax.nn.softmax(den(xts, sig) + c)
  ok = np.isfinite(np.asarray(den(xts, sig))).all(-1)
  assert np.abs(np.asarray(tuned - ref)[ok]).max() < 3e-3


def test_dpo_on_reward_ranked_pairs_raises_reward():
  _, p_ref = _product(2)
  proc = processes.Absorbing(V)
  den = exact.true_denoiser(p_ref, proc, L)
  w = np.array([0.0, 1.0, -1.0])
  x0s = exact.all_sequences(V, L)
  rng = np.random.default_rng(0)
  samples = x0s[rng.choice(len(x0s), 4000, p=p_ref)]
  pairs = reward.make_preference_pairs(samples, w[samples].sum(-1))
  assert np.all(w[pairs[:, 0]].sum(-1) > w[pairs[:, 1]].sum(-1))
  nt = proc.num_states ** L
  beta = 1.0

  def loss(c, key):
    ch, rj = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
    sig = jnp.full((len(ch),), SIGMA)
    xc = proc.sample_forward(key, ch, sig)
    xr = proc.sample_forward(key, rj, sig)        # same key: same noise pattern
    rc = reward.implicit_log_ratio(c[_idx(xc, proc.num_states)], den(xc, sig), ch, xc,
                                   sig, proc)
    rr = reward.implicit_log_ratio(c[_idx(xr, proc.num_states)], den(xr, sig), rj, xr,
                                   sig, proc)
    return reward.dpo_loss(rc, rr, beta).mean()

  c = jnp.zeros((nt, L, V))
  opt = optax.adam(0.05)
  st = opt.init(c)
  step = jax.jit(lambda c, st, k: _upd(opt, lambda cc: loss(cc, k), c, st))
  for i in range(200):
    c, st = step(c, st, jax.random.PRNGKey(i))
  # Expected reward of the fine-tuned model's fully-masked marginals vs the reference.
  full = jnp.full((1, L), proc.mask_id)
  sig = jnp.full((1,), SIGMA)
  base = jax.nn.softmax(den(full, sig))[0]
  tuned = jax.nn.softmax(den(full, sig) + c[_idx(full, proc.num_states)])[0]
  assert float((tuned @ w).sum()) > float((base @ w).sum()) + 0.2


def test_reward_deltas_exact_taylor_and_python():
  x = jnp.asarray(np.random.default_rng(3).integers(0, 4, (3, 5)))
  w = jnp.array([0.5, -1.0, 2.0, 0.0])
  tok = reward.token_reward_deltas(w, x)
  seq = lambda t: jnp.sum(w[t], -1)
  np.testing.assert_allclose(reward.sequence_reward_deltas(seq, x, 4, "exact"), tok,
                             atol=1e-6)
  soft = lambda oh: jnp.sum(oh @ w, -1)
  np.testing.assert_allclose(reward.sequence_reward_deltas(seq, x, 4, "taylor", soft), tok,
                             atol=1e-6)
  decode = lambda arr: ["".join("abcd"[i] for i in row) for row in arr]
  py = reward.python_reward(lambda s: float(s.count("c")), decode)
  d = np.asarray(jax.jit(lambda x: reward.sequence_reward_deltas(py, x, 4, "exact"))(x))
  want = (np.arange(4) == 2)[None, None] * 1.0 - (np.asarray(x) == 2)[..., None]
  np.testing.assert_allclose(d, want, atol=1e-6)
  with pytest.raises(ValueError, match="soft_reward_fn"):
    reward.sequence_reward_deltas(seq, x, 4, "taylor")


def test_finetune_runs_checkpoint_and_reload_through_the_normal_path(tmp_path):
  from helpers import small_dataset, tiny_config
  from tcsm_jax import sampling
  from tcsm_jax.training import restore, trainer
  ds = small_dataset(20000, 4000)
  small = {"data.seq_len": 16, "train.num_steps": 3, "train.eval_every": 3,
           "train.batch_size": 8}
  ref_cfg = tiny_config(**small)
  ref_dir = str(tmp_path / "ref")
  trainer.train_and_evaluate(ref_cfg, ref_dir, experiment=trainer.build(ref_cfg, ds))
  for kind, rew in [("reward", "token"), ("reward", "classifier"),
                    ("preference", "token")]:
    cfg = tiny_config(**small, **{"finetune.kind": kind, "finetune.ref_workdir": ref_dir,
                                  "finetune.reward": rew, "finetune.beta": 0.5,
                                  "finetune.classifier_steps": 5,
                                  "finetune.num_pairs": 16,
                                  "finetune.pair_sample_steps": 4})
    wd = str(tmp_path / f"{kind}_{rew}")
    out = trainer.train_and_evaluate(cfg, wd, experiment=trainer.build(cfg, ds, wd))
    assert np.isfinite(out["loss"]) and np.isfinite(out["eval/nll_bound"]), out
    run = restore.load_run(wd, dataset=ds)
    assert run.step == 3
    exp = run.experiment
    # Before any update the correction is exactly zero: at step 0 the fine-tuned model
    # is the reference; after loading, its logits are reference + trained correction.
    x_t = jnp.full((2, 16), exp.process.mask_id)
    sig = jnp.ones((2,))
    init = exp.init_params(jax.random.PRNGKey(0))
    np.testing.assert_allclose(exp.apply_fn(init, x_t, sig),
                               exp.ref.apply_fn(exp.ref_params, x_t, sig), atol=1e-6)
    assert not np.allclose(exp.apply_fn(run.params, x_t, sig),
                           exp.ref.apply_fn(exp.ref_params, x_t, sig))
    x, _ = sampling.sample(jax.random.PRNGKey(1), lambda a, s: exp.apply_fn(run.params, a, s),
                           exp.process, exp.schedule, (2, 16), steps=4)
    assert np.asarray(x).max() < exp.dataset.vocab_size
    if kind == "preference":
      assert os.path.exists(os.path.join(wd, "preferences.npz"))

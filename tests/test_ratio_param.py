"""Density-ratio parameterizations of reward fine-tuning (issue 15, part 2), exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tcsm_jax import errors, exact, processes, scores
from tcsm_jax.posttrain import reward

V, L, SIGMA = 3, 2, 0.8
W, BETA = np.array([0.0, 1.0, -0.5]), 0.4


def _case():
  """Product reference, additive reward: the tilted posterior is exactly reachable."""
  m = np.random.default_rng(0).dirichlet(np.ones(V) * 2, size=L)
  x0s = exact.all_sequences(V, L)
  p_ref = np.prod(m[np.arange(L), x0s], -1)
  proc = processes.Absorbing(V)
  den = exact.true_denoiser(p_ref, proc, L)
  jnt = exact.joint(p_ref, proc, SIGMA, L)
  i0, it = np.nonzero(jnt > 0)
  x0, xt = jnp.asarray(x0s[i0]), jnp.asarray(exact.all_sequences(proc.num_states, L)[it])
  sig = jnp.full((len(it),), SIGMA)
  p_tilt = p_ref * np.exp(W[x0s].sum(-1) / BETA)
  want = exact.position_marginals(exact.posterior(p_tilt / p_tilt.sum(), proc, SIGMA, L)[1],
                                  V, L)
  return dict(proc=proc, x0=x0, xt=xt, it=jnp.asarray(it), sig=sig,
              wts=jnp.asarray(jnt[i0, it], jnp.float32), ref=den(xt, sig),
              deltas=reward.token_reward_deltas(W, x0), want=want[it], nt=jnt.shape[1])


def _fit(case, bound=0.0, reg=0.0, steps=700):
  """A free log-ratio table ``g[x_t, L, V]`` (the explicit head) trained to convergence on
  the exact expected score-form gKL reward loss (+ the ratio penalty)."""
  c = case

  def eff(g):
    return reward.bounded_log_ratio(g[c["it"]], bound)

  def loss(g):
    corr = eff(g)
    per = reward.reward_loss(corr, c["ref"], c["x0"], c["xt"], c["sig"], c["proc"],
                             c["deltas"], BETA, "score", "gkl").sum(-1)
    pen = reward.log_ratio_variance(corr, c["ref"], c["proc"], c["xt"], c["sig"]).sum(-1)
    return jnp.sum(c["wts"] * (per + reg * pen))

  opt = optax.adam(0.05)
  g = jnp.zeros((c["nt"], L, V))
  st = opt.init(g)

  @jax.jit
  def step(g, st):
    u, st = opt.update(jax.grad(loss)(g), st, g)
    return optax.apply_updates(g, u), st

  for _ in range(steps):
    g, st = step(g, st)
  corr = eff(g)
  probs = np.asarray(jnp.exp(scores.model_log_probs(c["ref"] + corr, c["proc"], c["xt"],
                                                    c["sig"])))
  var = np.asarray(reward.log_ratio_variance(corr, c["ref"], c["proc"], c["xt"], c["sig"]))
  keep = np.asarray(scores.support(c["proc"], c["xt"], c["sig"]))
  return probs, np.where(keep, np.asarray(corr), 0.0), float(np.asarray(c["wts"]) @
                                                             var.sum(-1))


def test_bounded_head_reaches_the_target_when_the_bound_allows_and_saturates_otherwise():
  case = _case()
  free, corr, _ = _fit(case)
  np.testing.assert_allclose(free, case["want"], atol=5e-3)
  need = np.max(np.abs(corr - corr.mean(-1, keepdims=True)))     # centred log-ratios
  assert need > 1.0
  wide, _, _ = _fit(case, bound=3 * need)
  np.testing.assert_allclose(wide, case["want"], atol=5e-3)
  small = 0.2 * need
  tight, corr_t, _ = _fit(case, bound=small)
  assert np.max(np.abs(tight - case["want"])) > 0.05
  assert np.max(np.abs(corr_t)) <= small + 1e-6
  assert np.max(np.abs(corr_t)) > 0.9 * small            # pinned at the trust region


def test_ratio_penalty_pulls_the_optimum_toward_the_reference_monotonically():
  case = _case()
  out = [_fit(case, reg=lam) for lam in (0.0, 0.3, 3.0, 30.0)]
  np.testing.assert_allclose(out[0][0], case["want"], atol=5e-3)
  spread = [o[2] for o in out]
  assert all(a > b for a, b in zip(spread, spread[1:])), spread
  assert spread[-1] < 0.05 * spread[0]
  ref_p = np.asarray(jnp.exp(scores.model_log_probs(case["ref"], case["proc"], case["xt"],
                                                    case["sig"])))
  dist = [np.abs(o[0] - ref_p).max() for o in out]
  assert all(a > b for a, b in zip(dist, dist[1:])) and dist[-1] < 0.3 * dist[0], dist


def test_log_ratio_variance_matches_a_direct_computation():
  rng = np.random.default_rng(3)
  proc = processes.Absorbing(4)
  xt = jnp.asarray([[4, 1, 4], [0, 4, 4]])
  sig = jnp.asarray([0.5, 2.0])
  ref = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  corr = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  got = np.asarray(reward.log_ratio_variance(corr, ref, proc, xt, sig))
  lp = np.asarray(scores.model_log_probs(ref, proc, xt, sig), np.float64)
  lq = np.asarray(scores.model_log_probs(ref + corr, proc, xt, sig), np.float64)
  for b in range(2):
    for i in range(3):
      ok = np.isfinite(lp[b, i])
      pr, lr = np.exp(lp[b, i][ok]), lq[b, i][ok] - lp[b, i][ok]
      want = np.sum(pr * (lr - np.sum(pr * lr)) ** 2)
      assert abs(got[b, i] - want) < 1e-5, (b, i, got[b, i], want)
  assert got[0, 1] == 0.0 and got[1, 0] == 0.0       # unmasked: determined positions
  assert np.all(got[np.asarray(xt) == 4] > 1e-3)
  np.testing.assert_allclose(
      reward.log_ratio_variance(corr + 5.0, ref, proc, xt, sig), got, atol=1e-4)
  assert float(jnp.max(reward.log_ratio_variance(jnp.zeros_like(corr), ref, proc, xt,
                                                 sig))) == 0.0


def test_score_form_sees_only_ratios_so_the_normalizer_is_free():
  """Adding any per-position constant to the explicit head (an unnormalized ratio)
  changes neither the score-form loss nor its gradient."""
  case = _case()
  rng = np.random.default_rng(1)
  g = jnp.asarray(rng.normal(size=case["ref"].shape), jnp.float32)
  shift = jnp.asarray(rng.normal(size=case["ref"].shape[:2] + (1,)) * 5, jnp.float32)

  def loss(corr, shift):
    return jnp.sum(case["wts"] * reward.reward_loss(
        corr + shift, case["ref"], case["x0"], case["xt"], case["sig"], case["proc"],
        case["deltas"], BETA, "score", "gkl").sum(-1))

  np.testing.assert_allclose(loss(g, shift), loss(g, 0.0), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(loss)(g, shift), jax.grad(loss)(g, 0.0), atol=1e-5)
  assert float(jnp.max(jnp.abs(jax.grad(loss)(g, 0.0)))) > 1e-3


_SMALL = {"data.seq_len": 16, "train.num_steps": 3, "train.eval_every": 3,
          "train.batch_size": 8}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  from helpers import small_dataset, tiny_config
  from tcsm_jax.training import restore, trainer
  ds = small_dataset(20000, 4000)
  ref_cfg = tiny_config(**_SMALL)
  ref_dir = str(tmp_path_factory.mktemp("ref"))
  trainer.train_and_evaluate(ref_cfg, ref_dir, experiment=trainer.build(ref_cfg, ds))
  return ds, ref_dir, restore.load_run(ref_dir, dataset=ds)


@pytest.mark.parametrize("name, extra", [
    ("implicit", {"finetune.parameterization": "implicit"}),
    ("bounded", {"finetune.ratio_bound": 0.5, "finetune.ratio_reg": 1.0}),
    ("implicit_pref", {"finetune.parameterization": "implicit",
                       "finetune.kind": "preference", "finetune.ratio_reg": 0.1}),
])
def test_parameterizations_train_checkpoint_and_reload(tmp_path, reference, name, extra):
  from helpers import tiny_config
  from tcsm_jax.training import restore, trainer
  ds, ref_dir, ref_run = reference
  small = _SMALL
  cfg = tiny_config(**small, **{"finetune.kind": "reward", "finetune.ref_workdir": ref_dir,
                                "finetune.reward": "token", "finetune.beta": 0.5,
                                "finetune.num_pairs": 16, "finetune.pair_sample_steps": 4,
                                "model.width": 48, **extra})
  wd = str(tmp_path / name)
  exp = trainer.build(cfg, ds, wd)
  x_t = jnp.full((2, 16), exp.process.mask_id).at[:, :4].set(3)
  sig = jnp.ones((2,))
  ref_out = exp.ref.apply_fn(exp.ref_params, x_t, sig)
  init = exp.full_params(exp.init_params(jax.random.PRNGKey(0)), exp.ref_params)
  np.testing.assert_allclose(exp.apply_fn(init, x_t, sig), ref_out, atol=1e-5)
  out = trainer.train_and_evaluate(cfg, wd, experiment=exp)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval/nll_bound"]), (name, out)
  run = restore.load_run(wd, dataset=ds)
  got = run.experiment.apply_fn(run.params, x_t, sig)
  assert not np.allclose(got, ref_out, atol=1e-4), name
  # Training the copy leaves the frozen reference untouched (no aliasing, no donation).
  for a, b in zip(jax.tree.leaves(run.params["reference"]), jax.tree.leaves(ref_run.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  if name == "implicit":     # the reference's architecture, not config.model's width 48
    shapes = jax.tree.map(jnp.shape, run.params["correction"])
    assert shapes == jax.tree.map(jnp.shape, ref_run.params)
  if name == "bounded":
    g, _ = run.experiment.corr_and_ref(run.params["correction"], run.params["reference"],
                                       x_t, sig)
    assert float(jnp.max(jnp.abs(g))) < 0.5
  logs = [json.loads(l) for l in open(f"{wd}/metrics.jsonl")]
  if "ratio_reg" in str(extra):
    assert any("ratio_var" in r for r in logs), name


def test_implicit_with_a_bound_is_a_one_line_config_error():
  from helpers import tiny_config
  from tcsm_jax.training import config as config_lib
  cfg = tiny_config(**{"finetune.kind": "reward", "finetune.ref_workdir": "x",
                       "finetune.parameterization": "implicit", "finetune.ratio_bound": 1.0})
  with pytest.raises(errors.ConfigError, match="ratio_bound") as e:
    config_lib.validate(cfg)
  assert "\n" not in str(e.value)


def test_a_classifier_saved_on_eight_devices_loads_on_one(tmp_path):
  """The reward classifier restores on another topology (it once refused a CPU-saved
  classifier on a GPU: orbax's topology check without a target sharding)."""
  import os
  import subprocess
  import sys
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from tcsm_jax.posttrain import classifier
  model = classifier.ConvClassifier()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 5)))["params"]
  mesh = Mesh(np.asarray(jax.devices()), ("d",))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  assert len(jax.devices()) == 8
  classifier.save(str(tmp_path / "clf"), params)
  x = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (3, 16), 0, 5))
  want = np.asarray(model.apply({"params": params}, jax.nn.one_hot(x, 5)))
  np.save(tmp_path / "x.npy", x)
  code = (f"import numpy as np, jax; from tcsm_jax.posttrain import classifier as c; "
          f"m, p = c.load({str(tmp_path / 'clf')!r}, 16, 5); x = np.load("
          f"{str(tmp_path / 'x.npy')!r}); print(len(jax.devices()), *np.asarray(m.apply("
          f"{{'params': p}}, jax.nn.one_hot(x, 5))).tolist())")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  vals = out.stdout.split()
  assert vals[0] == "1"
  np.testing.assert_allclose([float(v) for v in vals[1:]], want.ravel(), rtol=1e-6)


@pytest.mark.parametrize("param, extra", [("implicit", {}),
                                          ("explicit", {"finetune.ratio_bound": 0.05,
                                                        "finetune.ratio_reg": 1.0})])
def test_parameterizations_without_a_trained_reference(param, extra):
  """The default-run stand-in for the trainer test: a reference at its init weights,
  the fine-tuning experiment assembled around it, one loss and gradient."""
  import dataclasses
  from helpers import small_dataset, tiny_config
  from tcsm_jax import models
  from tcsm_jax.posttrain import finetune
  from tcsm_jax.training import experiment as experiment_lib
  ds = small_dataset(4000, 2000)
  ref_cfg = tiny_config(**{"data.seq_len": 16})
  ref = experiment_lib.build(ref_cfg, ds)
  ref_params = jax.jit(ref.init_params)(jax.random.PRNGKey(0))   # eager init: seconds
  # A reference whose head is not zero (trained references are not).
  ref_params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(
      jax.random.PRNGKey(1), a.shape), ref_params)
  cfg = tiny_config(**{"data.seq_len": 16, "finetune.kind": "reward",
                       "finetune.ref_workdir": "unused", "finetune.reward": "token",
                       "finetune.beta": 0.5, "finetune.parameterization": param, **extra})
  model = ref.model if param == "implicit" else models.build_denoiser(
      cfg, ds.vocab_size, ref.process.num_states)
  rew, deltas = finetune.make_reward(cfg, ds, "")
  exp = finetune.FinetuneExperiment(cfg, ds, ref.process, ref.schedule, model,
                                    frozen=ref_params, ref=ref, ref_params=ref_params,
                                    reward_fn=rew, deltas_fn=deltas)
  init = jax.jit(exp.init_params)(jax.random.PRNGKey(2))
  x_t = jnp.full((2, 16), ref.process.mask_id).at[:, :4].set(3)
  sig = jnp.ones((2,))
  np.testing.assert_allclose(
      jax.jit(exp.apply_fn)(exp.full_params(init, ref_params), x_t, sig),
      jax.jit(ref.apply_fn)(ref_params, x_t, sig), atol=1e-5)
  if param == "implicit":      # a copy, not the same buffers
    leaf, ref_leaf = jax.tree.leaves(init)[0], jax.tree.leaves(ref_params)[0]
    assert leaf is not ref_leaf and np.array_equal(leaf, ref_leaf)
  train_fn, _ = exp.loss_fns()
  x0 = jnp.asarray(ds.train[:64].reshape(4, 16), jnp.int32)
  (loss, metrics), g = jax.jit(jax.value_and_grad(train_fn, has_aux=True))(
      init, ref_params, x0, jax.random.PRNGKey(3))
  assert np.isfinite(float(loss))
  assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g)) > 0
  if param == "explicit":
    assert "ratio_var" in metrics
    moved = jax.tree.map(lambda p, d: p - 10.0 * d, init, g)   # a big step
    corr, _ = jax.jit(exp.corr_and_ref)(moved, ref_params, x_t, sig)
    assert 0 < float(jnp.max(jnp.abs(corr))) <= 0.05 + 1e-6

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
# # 02 · Train, sample, evaluate
#
# *This notebook is a jupytext percent-format `.py` file (the reviewed source of
# truth). Open it in Jupyter with jupytext installed, or convert it:
# `jupytext --to notebook notebooks/02_train_sample_evaluate.py`.
# `tests/test_notebooks.py` runs it top to bottom (trimmed with `TCSM_NB_QUICK=1`).*
#
# A tiny TCSM denoiser on the bundled King James Bible corpus (27 characters), with the
# library's functions instead of the training binary:
#
# 1. config -> `tj.build` -> a jitted train step -> a step loop written here, with a
#    loss plot;
# 2. the same with `tj.train(config, workdir, on_log=...)` (checkpoints, eval, resume)
#    and a live plot from its callback;
# 3. sampling with each sampler, infilling a template;
# 4. the NLL bound (`tj.likelihood.evaluate`);
# 5. loading a workdir written by `python -m experiments.train` (`tj.load_run`).
#
# The models here are far too small and short-trained to write English: the point is
# the API. The README's main command trains the real default job.

# %%
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

if "inline" not in matplotlib.get_backend():
  matplotlib.use("Agg")            # no display: run as a script or in a test
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

import tcsm_jax as tj
from tcsm_jax.data import pipeline
from tcsm_jax.training import experiment, step as step_lib

QUICK = os.environ.get("TCSM_NB_QUICK") == "1"   # the test suite's trimmed run
# The repository root (for `python -m experiments.train` and its config files).
_here = [pathlib.Path.cwd(), pathlib.Path(globals().get("__file__", ".")).resolve()]
REPO = next(p for h in _here for p in [h, *h.parents]
            if (p / "experiments" / "configs").is_dir())
sys.path.insert(0, str(REPO))
# Workdirs of this notebook: a fresh temporary directory (under $TCSM_NB_WORKDIR if set).
WORK = pathlib.Path(tempfile.mkdtemp(prefix="tcsm_nb02_",
                                     dir=os.environ.get("TCSM_NB_WORKDIR") or None))
print("jax", jax.__version__, jax.devices(), "| quick" if QUICK else "| full",
      "| workdirs in", WORK)

try:                                # live plots in Jupyter, nothing when run as a script
  from IPython import get_ipython
  from IPython.display import clear_output, display
  IN_NOTEBOOK = get_ipython() is not None
except ImportError:
  IN_NOTEBOOK = False

# %% [markdown]
# ## 1. Config -> experiment -> a step loop
#
# Start from the default job's config (`experiments/configs/kjv_tiny.py`) and shrink
# it. `tj.default_config()` lists every key with its default; an unknown key or a wrong
# type fails in `tj.build` before anything runs.

# %%
from experiments.configs import kjv_tiny

SMALL = {                          # also passed to the binary in section 5
    "data.seq_len": 32 if QUICK else 64,
    "model.num_layers": 1 if QUICK else 2,
    "model.width": 32 if QUICK else 64,
    "model.num_heads": 2,
    "model.cond_width": 32 if QUICK else 64,
    "train.batch_size": 16 if QUICK else 32,
    "optim.lr": 3e-3,
    "optim.warmup_steps": 5 if QUICK else 30,
    "train.ema_decay": 0.9 if QUICK else 0.98,
}
STEPS = 25 if QUICK else 400


def small_config(num_steps):
  cfg = kjv_tiny.get_config()
  for key, value in SMALL.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg.train.num_steps = num_steps
  return cfg


cfg = small_config(STEPS)
exp = tj.build(cfg)                  # data, process, schedule, model, loss functions
ds = exp.dataset
L, V = cfg.data.seq_len, ds.vocab_size
print(f"process {type(exp.process).__name__}({V}) | schedule {exp.schedule} | "
      f"loss {cfg.loss.kind}/{cfg.loss.form}/{cfg.loss.divergence} | "
      f"{len(ds.train):,} train characters")
print("a training chunk:", repr(ds.decode(np.asarray(ds.train[:L]))))

# %% [markdown]
# `exp.loss_fns()` gives `(train_fn, eval_fn)` with the signature
# `fn(params, frozen, x0, key, train) -> (loss, metrics)`; `frozen` holds parameters
# that enter the loss without being trained (a teacher's; `None` here).
# `experiment.state_factory` gives the train state (params, AdamW state, EMA) and
# `step.make_train_step` the pure update, which we jit.

# %%
train_fn, eval_fn = exp.loss_fns()
create, optimizer, lr_schedule = experiment.state_factory(exp)
state = jax.jit(create)(jax.random.PRNGKey(cfg.seed))   # jitted: no op-by-op init
n_params = sum(x.size for x in jax.tree.leaves(state.params))
print(f"{n_params:,} parameters")

train_step = jax.jit(step_lib.make_train_step(
    lambda p, x0, key, train: train_fn(p, exp.frozen, x0, key, train),
    optimizer, lr_schedule, cfg.train.ema_decay), donate_argnums=0)
eval_loss = jax.jit(lambda p, x0, key: eval_fn(p, exp.frozen, x0, key, False)[0])

sampler = pipeline.ChunkSampler(ds.train, L, cfg.train.batch_size, seed=cfg.seed)
val = next(pipeline.eval_batches(ds.validation, L, 64, 1))   # one fixed batch

history = {"step": [], "loss": [], "eval_step": [], "eval": []}
t0 = time.time()
for i in range(STEPS):
  state, metrics = train_step(state, jnp.asarray(sampler.batch(i)))
  history["step"].append(i + 1)
  history["loss"].append(float(metrics["loss"]))
  if (i + 1) % max(STEPS // 8, 1) == 0 or i + 1 == STEPS:
    history["eval_step"].append(i + 1)
    history["eval"].append(float(eval_loss(state.ema_params, jnp.asarray(val),
                                           jax.random.PRNGKey(0))))
print(f"{STEPS} steps in {time.time() - t0:.1f} s (compilation included); "
      f"last loss {history['loss'][-1]:.3f}, validation bound "
      f"{history['eval'][-1]:.3f} nats/char")

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(history["step"], history["loss"], lw=0.8, label="train loss (TCSM)")
ax.plot(history["eval_step"], history["eval"], "o-", label="validation NLL bound")
ax.set_xlabel("step")
ax.set_ylabel("nats / char")
ax.legend()
fig.tight_layout()
plt.show()
params = state.ema_params
assert np.isfinite(history["loss"]).all()

# %% [markdown]
# ## 2. `tj.train`: the binary's loop, from a notebook
#
# `tj.train(config, workdir, on_log=callback)` is what `python -m experiments.train`
# runs: sharded jitted steps, periodic eval, orbax checkpoints, `metrics.jsonl` and
# TensorBoard files, resume from the workdir. `on_log(step, scalars)` is called at
# every log and eval line; here it redraws a live plot.

# %%
class LivePlot:
  """Redraws a loss curve in place (Jupyter); collects silently elsewhere."""

  def __init__(self):
    self.fig = Figure(figsize=(6, 3.2))
    self.ax = self.fig.add_subplot()
    self.train, self.evals = [], []

  def __call__(self, step, scalars):
    if "loss" in scalars:
      self.train.append((step, scalars["loss"]))
    if "eval/nll_bound" in scalars:
      self.evals.append((step, scalars["eval/nll_bound"]))
    self.draw()

  def draw(self):
    self.ax.clear()
    if self.train:
      self.ax.plot(*zip(*self.train), label="train loss")
    if self.evals:
      self.ax.plot(*zip(*self.evals), "o-", label="eval NLL bound")
    self.ax.set_xlabel("step")
    self.ax.set_ylabel("nats / char")
    self.ax.legend()
    if IN_NOTEBOOK:
      clear_output(wait=True)
      display(self.fig)


TRAIN_STEPS = 10 if QUICK else 150
RUN = {"train.num_steps": TRAIN_STEPS, "train.log_every": 2 if QUICK else 10,
       "train.eval_every": TRAIN_STEPS // 2, "train.eval_batches": 1 if QUICK else 4,
       "train.checkpoint_every": TRAIN_STEPS}
cfg2 = small_config(TRAIN_STEPS)
for key, value in RUN.items():
  section, leaf = key.split(".")
  cfg2[section][leaf] = value
wd_lib = WORK / "library_run"
live = LivePlot()
result = tj.train(cfg2, str(wd_lib), on_log=live)
print({k: round(v, 4) for k, v in result.items() if k in ("loss", "eval/nll_bound")})
print("workdir:", sorted(os.listdir(wd_lib)))
assert live.train and live.evals

# %% [markdown]
# Calling `tj.train` again with the same workdir resumes from the newest checkpoint
# (params, optimizer, EMA, step, data position); with the same `train.num_steps` there
# is nothing left to do, so raise it to continue. `tj.load_run` restores the run for
# sampling and evaluation.

# %%
run_lib = tj.load_run(str(wd_lib))
print("restored step", run_lib.step, "| config.json ==", json.loads(
    (wd_lib / "config.json").read_text())["train"]["num_steps"], "steps")

# %% [markdown]
# ## 3. Sampling
#
# `tj.sampling.jit_sampler(apply_fn, process, schedule, shape, **options)` returns
# `fn(params, key) -> (tokens, info)`: the reverse chain from `t = 1` (all masks) to
# `t ~ 0`, jitted with the parameters as an *argument*, so one compile serves every
# checkpoint. Samplers:
#
# * `euler`: tau-leaping on reverse rates built from the model's concrete score;
# * `analytic`: the exact reverse transition of the factorized posterior (for the
#   absorbing process this is MDLM/MD4's ancestral step);
# * `ancestral`: the analytic step plus a cache that skips the network when no
#   sequence changed (`info['nfe']` counts network calls);
# * `remdm`: the analytic step with ReMDM remasking (`remask_eta = 0`, the default, is
#   `analytic` itself);
# * `first_hitting`: exact event-by-event sampling, one network call per unmasking
#   event (at most `L`), no time grid.
#
# Every draw is exact far below float32's Gumbel floor (`draw="gumbel32"` gives the old
# draws). For the absorbing process with the log-linear schedule (alpha linear in t) the
# Euler step has the analytic step's law (their draws differ: Euler draws one categorical
# over `V + 1` states, analytic a Bernoulli then a token). The cache of `ancestral` pays
# off for few sequences and many steps.

# %%
SAMPLE_STEPS = 8 if QUICK else 64
N_SAMPLES = 3
samplers = {}
for name in tj.sampling.SAMPLERS:
  samplers[name] = tj.sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                           (N_SAMPLES, L), steps=SAMPLE_STEPS,
                                           sampler=name)
  tokens, info = samplers[name](params, jax.random.PRNGKey(1))
  print(f"{name:>9}: {int(info['nfe'])} network calls")
  for text in ds.decode(np.asarray(tokens)):
    print("          >", text)
  assert tokens.shape == (N_SAMPLES, L) and int(tokens.max()) < V

# %% [markdown]
# **Infilling.** Clamped positions keep their tokens at every step, so the network
# conditions on them. `sampling.clamp_from_template` turns a template with holes
# (`-1`) into `(clamp_tokens, clamp_mask)`.

# %%
text = "and god said ____________ light"[:L].ljust(L, "_")
template = np.array([-1 if c == "_" else int(ds.encode(c)[0]) for c in text])
clamp_tokens, clamp_mask = tj.sampling.clamp_from_template(
    np.tile(template[None], (N_SAMPLES, 1)), V)
infill = tj.sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (N_SAMPLES, L),
                                 steps=SAMPLE_STEPS, clamp_tokens=clamp_tokens,
                                 clamp_mask=clamp_mask)
tokens, _ = infill(params, jax.random.PRNGKey(2))
print("template :", text)
for t in ds.decode(np.asarray(tokens)):
  print("filled   :", t)
assert (np.asarray(tokens)[:, template >= 0] == template[template >= 0]).all()

# %% [markdown]
# ## 4. The NLL bound
#
# `tj.likelihood.evaluate` averages the continuous-time bound (reconstruction +
# diffusion integral + prior) over validation batches, with stratified time samples
# and a standard error. Pass the parameters explicitly (`params=`): they are then an
# argument of the jitted computation, not constants baked into it.

# %%
EVAL_BATCHES, NUM_T = (2, 2) if QUICK else (8, 8)
batches = list(pipeline.eval_batches(ds.validation, L, 32, EVAL_BATCHES))
report = tj.likelihood.evaluate(jax.random.PRNGKey(0), exp.apply_fn, batches,
                                exp.process, exp.schedule, num_t=NUM_T, params=params)
print(f"{report.nats_per_token:.3f} +- {report.stderr:.3f} nats/char = "
      f"{report.bits_per_token:.3f} bits/char on {report.num_sequences} sequences "
      f"(uniform over 27 symbols: {np.log2(27):.3f} bits)")
assert np.isfinite(report.nats_per_token)

# %% [markdown]
# ## 5. A workdir written by the binary
#
# `python -m experiments.train` takes a config file plus `--config.key=value`
# overrides and runs `tj.train`. Given the config of section 2 it trains the same run,
# step for step (same seed, same data order), which the metrics below confirm.
# `tj.load_run(workdir)` restores the run's config, experiment and (EMA) parameters;
# the loaded model has the shapes of ours, so the samplers compiled above serve it
# without compiling again.

# %%
wd_bin = WORK / "binary_run"
cmd = [sys.executable, "-m", "experiments.train",
       "--config=experiments/configs/kjv_tiny.py", f"--workdir={wd_bin}",
       "--summary_samples=0"]
cmd += [f"--config.{k}={v}" for k, v in {**SMALL, **RUN}.items()]
print(" ".join(cmd[2:]))
t0 = time.time()
proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
print(f"exit {proc.returncode} after {time.time() - t0:.0f} s; last lines:")
print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:]))
assert proc.returncode == 0, proc.stderr[-3000:]

# %%
run = tj.load_run(str(wd_bin))
# load_run places the parameters on a one-device mesh (committed NamedSharding arrays);
# a jitted function compiles once per combination of input shardings, so make them
# plain arrays like ours.
run.params = jax.tree.map(jnp.asarray, jax.device_get(run.params))
print(f"loaded step {run.step}, model {run.config.model.num_layers} layer(s) x "
      f"{run.config.model.width}")
tokens, _ = samplers["analytic"](run.params, jax.random.PRNGKey(3))
for t in run.experiment.dataset.decode(np.asarray(tokens)):
  print(">", t)
read = lambda wd: [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
bin_losses = [(m["step"], m["loss"]) for m in read(wd_bin) if "loss" in m]
lib_losses = [(m["step"], m["loss"]) for m in read(wd_lib) if "loss" in m]
print("train loss, binary :", [round(l, 4) for _, l in bin_losses])
print("train loss, tj.train:", [round(l, 4) for _, l in lib_losses])
np.testing.assert_allclose(bin_losses, lib_losses, rtol=1e-4)

# %% [markdown]
# Next: `03_targets_and_finetuning.py` swaps the data target for a teacher model and
# fine-tunes a trained model toward a reward.

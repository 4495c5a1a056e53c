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
# # 04 · A pre-trained diffusion LM: import, fine-tune, sample, score
#
# *This notebook is a jupytext percent-format `.py` file (the reviewed source of
# truth). Open it in Jupyter with jupytext installed, or convert it:
# `jupytext --to notebook notebooks/04_pretrained_models.py`.
# `tests/test_notebooks.py` runs it top to bottom (trimmed with `TCSM_NB_QUICK=1`).*
#
# TCSM's point is post-training in the clean space: start from an existing diffusion
# model and move it toward a target. This notebook does the whole path:
#
# 1. import an MDLM checkpoint (the format of `kuleshov-group/mdlm-owt`) into an
#    ordinary workdir (what `python -m experiments.convert` runs);
# 2. sample from it with the project's samplers;
# 3. fine-tune it toward `p_ref(x) exp(r(x) / beta)` with a reward;
# 4. score samples before and after under a GPT-2 judge, as the field computes
#    generative perplexity.
#
# **Here everything has random weights** (no network on the machines that run the
# tests): a tiny MDLM written in MDLM's own layout, a tiny random GPT-2 and its small
# byte-level BPE tokenizer (`tests/fixtures/gpt2_tiny`, made by `transformers`). The
# numbers show the mechanics, not quality. **With real weights the same cells are the
# real experiment**: set `TCSM_NB_MDLM` (a `huggingface-cli download
# kuleshov-group/mdlm-owt` directory), `TCSM_NB_GPT2` (e.g. `gpt2-large`),
# `TCSM_NB_TOKENIZER` (GPT-2's `tokenizer.json`) and `TCSM_NB_DATA` (OpenWebText
# prepared with it, `experiments.prepare_data`).

# %%
import json
import os
import pathlib
import sys
import tempfile

import jax
import matplotlib
import numpy as np

if "inline" not in matplotlib.get_backend():
  matplotlib.use("Agg")            # no display: run as a script or in a test
import matplotlib.pyplot as plt

import tcsm_jax as tj
from tcsm_jax.data import pipeline, prepared, sources, tokenizer as tok_lib
from tcsm_jax.training import imports

QUICK = os.environ.get("TCSM_NB_QUICK") == "1"   # the test suite's trimmed run
_here = [pathlib.Path.cwd(), pathlib.Path(globals().get("__file__", ".")).resolve()]
REPO = next(p for h in _here for p in [h, *h.parents]
            if (p / "experiments" / "configs").is_dir())
sys.path.insert(0, str(REPO))
WORK = pathlib.Path(tempfile.mkdtemp(prefix="tcsm_nb04_",
                                     dir=os.environ.get("TCSM_NB_WORKDIR") or None))
FIXTURE_GPT2 = REPO / "tests" / "fixtures" / "gpt2_tiny"
MDLM_DIR = os.environ.get("TCSM_NB_MDLM", "")            # real weights, if given
GPT2_DIR = os.environ.get("TCSM_NB_GPT2", str(FIXTURE_GPT2))
TOKENIZER = os.environ.get("TCSM_NB_TOKENIZER", str(FIXTURE_GPT2 / "tokenizer.json"))
DATA = os.environ.get("TCSM_NB_DATA", "")
print("jax", jax.__version__, jax.devices(), "| quick" if QUICK else "| full",
      "| workdirs in", WORK)

# %% [markdown]
# ## 1. An MDLM checkpoint, as MDLM publishes it
#
# `kuleshov-group/mdlm-owt` is a Hugging Face directory: `config.json` (MDLM's
# `MDLMConfig`: `vocab_size` = the tokenizer's ids + the mask, `hidden_dim`,
# `cond_dim`, `n_blocks`, `n_heads`, `time_conditioning`) and `model.safetensors`
# with the DiT's weights under `backbone.`. Without real weights we write one with
# random values, in exactly that layout (torch names, `Linear` weights as
# `[out, in]`), and the same tokenizer the judge uses.

# %%
tok = tok_lib.from_spec(f"hf:{TOKENIZER}")
print("tokenizer:", tok)

if not MDLM_DIR:
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  V, D, H, C, L = tok.vocab_size, 64, 4, 32, 2          # a tiny DiT of MDLM's shape
  rows = V + 1                                          # + the mask
  w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)
  b = lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32)
  state = {"vocab_embed.embedding": rng.standard_normal((rows, D)).astype(np.float32),
           "sigma_map.mlp.0.weight": w(C, 256), "sigma_map.mlp.0.bias": b(C),
           "sigma_map.mlp.2.weight": w(C, C), "sigma_map.mlp.2.bias": b(C),
           "output_layer.norm_final.weight": 1 + b(D),
           "output_layer.linear.weight": w(rows, D), "output_layer.linear.bias": b(rows),
           "output_layer.adaLN_modulation.weight": w(2 * D, C),
           "output_layer.adaLN_modulation.bias": b(2 * D)}
  for i in range(L):
    p = f"blocks.{i}."
    state.update({p + "norm1.weight": 1 + b(D), p + "norm2.weight": 1 + b(D),
                  p + "attn_qkv.weight": w(3 * D, D), p + "attn_out.weight": w(D, D),
                  p + "mlp.0.weight": w(4 * D, D), p + "mlp.0.bias": b(4 * D),
                  p + "mlp.2.weight": w(D, 4 * D), p + "mlp.2.bias": b(D),
                  p + "adaLN_modulation.weight": w(6 * D, C),
                  p + "adaLN_modulation.bias": b(6 * D)})
  MDLM_DIR = str(WORK / "mdlm-random")
  os.makedirs(MDLM_DIR)
  save_file({"backbone." + k: v for k, v in state.items()},
            os.path.join(MDLM_DIR, "model.safetensors"))
  with open(os.path.join(MDLM_DIR, "config.json"), "w") as f:
    json.dump({"model_type": "mdlm", "vocab_size": rows, "model_length": 32,
               "hidden_dim": D, "cond_dim": C, "n_blocks": L, "n_heads": H,
               "dropout": 0.1, "time_conditioning": False}, f, indent=2)
print(sorted(os.listdir(MDLM_DIR)))

# %% [markdown]
# Data in the same tokenizer (for evaluation and fine-tuning): the bundled King James
# text, prepared once into token shards (`python -m experiments.prepare_data`).

# %%
if not DATA:
  DATA = str(WORK / "kjv_prepared")
  src = sources.documents_source(str(REPO / "tcsm_jax/data/bundled/kjv_text8.txt.xz"))
  prepared.prepare(DATA, src, tok, progress=False)
print(json.dumps(prepared.read_manifest(DATA)["splits"]["validation"], indent=1)[:200])

# %% [markdown]
# ## 2. Convert: an ordinary workdir
#
# `imports.convert` is what `python -m experiments.convert --from=mdlm:DIR
# --workdir=W --tokenizer=... --data=...` runs: the DiT (`model.arch = dit`,
# term for term MDLM's module), the absorbing process with mask id `V`, MDLM's
# log-linear schedule, SUBS as "drop the mask logit" (the process carries unmasked
# tokens over), and a step-0 checkpoint with the source files' sha256.

# %%
W = str(WORK / "mdlm")
record = imports.convert("mdlm", MDLM_DIR, W, TOKENIZER, DATA,
                         seq_len=32 if MDLM_DIR.startswith(str(WORK)) else 0)
print({k: record[k] for k in ("kind", "process", "schedule", "vocab_size", "model")})
print({k: v["sha256"][:16] for k, v in record["files"].items()})
ref = tj.load_run(W)
print("restored step", ref.step, "| parameters", ref.fingerprint,
      "| config:", ref.config.model.arch, ref.config.process, ref.config.schedule.name)

# %% [markdown]
# ## 3. Sample and evaluate, as with any run
#
# The cached ancestral sampler is MDLM's `ddpm_cache`; the draws are exact (no float32
# Gumbel floor). The NLL bound is the masked ELBO on the prepared validation split.

# %%
from experiments.finetune import samples_and_reward   # noqa: E402

LENGTH = ref.config.data.seq_len
N_SAMPLES, SAMPLE_STEPS = (8, 8) if QUICK else (32, 64)
exp = ref.experiment
x_ref, _ = tj.sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                   (N_SAMPLES, LENGTH), steps=SAMPLE_STEPS,
                                   sampler="ancestral")(ref.params, jax.random.PRNGKey(0))
for t in exp.dataset.decode(np.asarray(x_ref[:3])):
  print(repr(t[:120]))
val = prepared.load(DATA).validation
batches = pipeline.eval_batches(val, LENGTH, 8, 2 if QUICK else 8)
rep = tj.likelihood.evaluate(jax.random.PRNGKey(1), exp.apply_fn, batches, exp.process,
                             exp.schedule, num_t=2 if QUICK else 8, params=ref.params)
print(f"NLL bound {rep.nats_per_token:.3f} +- {rep.stderr:.3f} nats/token "
      f"(log V = {np.log(exp.dataset.vocab_size):.3f}: random weights)")

# %% [markdown]
# ## 4. Fine-tune toward a reward
#
# Target `p_ref(x) exp(r(x) / beta)` with a per-token reward (`finetune.reward =
# token`: one unit per vowel token). The config is the converted workdir's
# (`experiments/configs/pretrained.py:W`) with the fine-tuning keys; the model is the
# frozen MDLM plus a log-ratio head of the same shape that starts at zero
# (`finetune.parameterization = explicit`). `tj.train` is what `python -m
# experiments.finetune` runs.

# %%
from experiments.configs import pretrained   # noqa: E402

FT_STEPS = 6 if QUICK else 200
cfg = pretrained.get_config(W)
cfg.data.path = DATA
cfg.finetune.kind = "reward"
cfg.finetune.ref_workdir = W
cfg.finetune.reward = "token"
cfg.finetune.token_weights = "aeiou=1"
cfg.finetune.beta = 0.5
cfg.loss.weighting = "constant"
cfg.train.num_steps = FT_STEPS
cfg.train.batch_size = 8 if QUICK else 32
cfg.train.log_every = 1 if QUICK else 10
cfg.train.eval_every = cfg.train.checkpoint_every = FT_STEPS
cfg.train.eval_batches = 1
cfg.eval.batch_size = 8
cfg.optim.lr = 1e-3
cfg.optim.warmup_steps = 2 if QUICK else 20
log = []
tj.train(cfg, str(WORK / "ft"),
         on_log=lambda step, m: "loss" in m and log.append((step, m["loss"])))
ft = tj.load_run(str(WORK / "ft"))
print("pins of the fine-tuned run:", {k: (v["workdir"], v["fingerprint"])
                                      for k, v in ft.experiment.pins.items()})

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(*zip(*log), marker=".")
ax.set_xlabel("step"), ax.set_ylabel("TCSM loss"), ax.set_title("reward fine-tuning")
plt.show()

# %%
reward_fn = ft.experiment.reward_fn
x_ref, r_ref = samples_and_reward(ref.experiment, ref.params, reward_fn, N_SAMPLES,
                                  SAMPLE_STEPS)
x_ft, r_ft = samples_and_reward(ft.experiment, ft.params, reward_fn, N_SAMPLES,
                                SAMPLE_STEPS)
print(f"mean reward (vowel tokens per sample): reference {r_ref:.2f} -> "
      f"fine-tuned {r_ft:.2f}")
for t in ft.experiment.dataset.decode(x_ft[:3]):
  print(repr(t[:120]))

# %% [markdown]
# ## 5. Score under GPT-2, as the field computes it
#
# The samples are decoded to text, retokenized with the judge's tokenizer and scored in
# its context window under MDLM's convention (`--gen_ppl_convention=mdlm`: EOS
# padding, context chunks, no BOS), next to the unigram entropy of the judge's tokens:
# what `python -m experiments.sample --judge=hf:DIR` reports. A generative perplexity
# means little without the entropy beside it (a colder sampler always wins on it).
# Here the judge is a tiny random GPT-2, so both numbers sit near its own random
# predictions; with `gpt2-large` this is MDLM's number.

# %%
from tcsm_jax.posttrain import judges   # noqa: E402

judge = judges.load_judge(f"hf:{GPT2_DIR}")
decode = ref.experiment.dataset.decode
scores = {name: judge.score(x, decode=decode, convention="mdlm",
                            model_tokenizer_sha=tok.sha256)
          for name, x in (("reference", x_ref), ("fine-tuned", x_ft))}
for name, s in scores.items():
  print(f"{name:>10}: gen PPL {s['gen_perplexity']:.1f} over {s['gen_ppl_tokens']} "
        f"judge tokens, judge-token entropy {s['judge_unigram_entropy']:.3f} nats "
        f"({s['gen_ppl_convention']}, judge {s['gen_ppl_judge']})")

fig, axes = plt.subplots(1, 2, figsize=(7, 3))
names = list(scores)
axes[0].bar(names, [scores[n]["gen_perplexity"] for n in names], color=["C0", "C1"])
axes[0].set_title("generative perplexity (GPT-2 judge)")
axes[1].bar(names, [scores[n]["judge_unigram_entropy"] for n in names],
            color=["C0", "C1"])
axes[1].set_title("unigram entropy (nats)")
fig.tight_layout()
plt.show()

# %% [markdown]
# With real weights: `TCSM_NB_MDLM=/data/mdlm-owt TCSM_NB_GPT2=/data/gpt2-large
# TCSM_NB_TOKENIZER=/data/gpt2/tokenizer.json TCSM_NB_DATA=/data/owt_gpt2` runs these
# same cells on MDLM-OWT (on an accelerator: 1,024-token samples, `SAMPLE_STEPS =
# 1000` for the paper's setting). The commands, with the published values, are in
# the README ("Reproducing a peer's number").

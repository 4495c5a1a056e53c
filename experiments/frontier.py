r"""The generative frontier: generative perplexity against sample entropy.

  python -m experiments.frontier --workdir=DIR --judge=JDIR|hf:DIR --outdir=OUT \
      [--gen_ppl_convention=auto|project|mdlm|duo|remdm|sedd] \
      [--samplers=analytic,remdm,first_hitting] [--steps=16,64,256,1024] \
      [--temperatures=0.8,0.9,1.0] [--top_ps=0.9,1.0] [--draws=exact] \
      [--remask_eta=0.02] [--num_samples=64]
  python -m experiments.frontier ... --nfe=4,8,16,32,64 \
      [--samplers=analytic,confidence,first_hitting,entropy_bound,confidence_threshold] \
      [--eb_gammas=0.01,0.1,1] [--confidence_taus=0.99,0.9,0.7]

A colder sampler always wins on generative perplexity alone, so each sampler x steps x
temperature x top-p x draw setting is a point (unigram entropy of its samples, their
perplexity under the judge); the data's own point (the validation text under the same
judge) is marked. ``first_hitting`` has no step count (it makes one network call per
unmasking event), so it is swept once per temperature and top-p. Writes
``OUT/frontier.csv`` (one row per setting, with samples/s and network calls) and
``OUT/frontier.png`` and ``OUT/samples.npz`` (``setting_i``: the samples of csv row
``i + 1``); ``samples/s`` are after compilation, from one run on a machine that may be
shared (compare them only within a quiet run); rerunning with the same ``--outdir`` recomputes everything.

``--nfe`` makes network calls the axis instead of ``--steps`` (``experiments/few_calls.py``:
grid samplers take ``nfe`` steps ending at ``t = 0``, ``confidence`` reveals
``ceil(L / nfe)`` tokens per call, ``first_hitting`` ``ceil(L / (nfe - 1))`` events per
call; the adaptive ``entropy_bound`` / ``confidence_threshold`` are swept over
``--eb_gammas`` / ``--confidence_taus`` and placed at the calls they made) and adds
``OUT/frontier_nfe.png`` (generative perplexity and entropy against calls).
"""

import io
import sys

import numpy as np
from absl import flags

from experiments import cli, common, few_calls, generate
from tcsm_jax import errors, fs, quality, sampling, strict_json
from tcsm_jax.training import log_setup

_WORKDIR = flags.DEFINE_string("workdir", None, "Diffusion model's workdir.")
_JUDGE, _CONV = common.define_judge_flags(" (required; --judge_workdir: alias).")
_OUT = flags.DEFINE_string("outdir", None, "Output directory.")
_SAMPLERS = flags.DEFINE_list("samplers", ["analytic", "remdm", "first_hitting"],
                              "Samplers to sweep.")
_STEPS = flags.DEFINE_list("steps", ["16", "64", "256", "1024"], "Step counts.")
_TEMPS = flags.DEFINE_list("temperatures", ["0.8", "0.9", "1.0"], "Temperatures.")
_TOP_PS = flags.DEFINE_list("top_ps", ["0.9", "1.0"], "Nucleus masses.")
_DRAWS = flags.DEFINE_list("draws", ["exact"], "Draws (exact, gumbel32).")
_ETA = flags.DEFINE_float("remask_eta", 0.02, "remdm: eta.")
_SCHED = flags.DEFINE_enum("remask_schedule", "cap", list(sampling.remask.REMASK_SCHEDULES),
                           "remdm: schedule.")
_NUM = flags.DEFINE_integer("num_samples", 64, "Samples per setting.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NFE = flags.DEFINE_list("nfe", [], "Network calls per sample (the NFE axis; replaces "
                         "--steps).")
_GAMMAS = flags.DEFINE_list("eb_gammas", ["0.01", "0.1", "0.3", "1", "3"],
                            "--nfe: entropy_bound's gammas.")
_TAUS = flags.DEFINE_list("confidence_taus", ["0.99", "0.9", "0.7", "0.5", "0.3"],
                          "--nfe: confidence_threshold's taus.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Network compute "
                           "dtype (default: the config's model.dtype).")
flags.mark_flags_as_required(["workdir", "outdir"])


def _floats(name, values, lo, hi):
  try:
    out = [float(v) for v in values]
  except ValueError:
    raise errors.FlagError(f"--{name} must be numbers, got {values}") from None
  for v in out:
    common.check_flag(lo < v <= hi, f"--{name} values must lie in ({lo}, {hi}], got {v}")
  return out


def settings():
  """The sweep, validated: a list of option overrides."""
  for name, flag in (("samplers", _SAMPLERS), ("steps", _STEPS), ("temperatures", _TEMPS),
                     ("top_ps", _TOP_PS), ("draws", _DRAWS)):
    common.check_flag(bool(flag.value), f"--{name} is empty: the sweep would have no "
                      "setting (give at least one value)")
  for s in _SAMPLERS.value:
    common.check_flag(s in sampling.SAMPLERS, f"--samplers: unknown sampler {s!r}; "
                      f"choose from {sampling.SAMPLERS}")
  for d in _DRAWS.value:
    common.check_flag(d in sampling.draws.DRAWS, f"--draws: unknown draw {d!r}")
  steps = _floats("steps", _STEPS.value, 0, 1e9)
  common.check_flag(all(s == int(s) for s in steps), f"--steps must be whole numbers, "
                    f"got {_STEPS.value}")
  steps = [int(s) for s in steps]
  temps = _floats("temperatures", _TEMPS.value, 0, 1e9)
  top_ps = _floats("top_ps", _TOP_PS.value, 0, 1)
  common.check_flag(0 <= _ETA.value <= 1, "--remask_eta must lie in [0, 1]")
  if _NFE.value:
    return nfe_settings(temps, top_ps)
  out = []
  for draw in _DRAWS.value:
    for s in _SAMPLERS.value:
      for n in (steps if s != "first_hitting" else [0]):
        for t in temps:
          for p in top_ps:
            o = dict(sampler=s, steps=max(n, 1), draw=draw, temperature=t, top_p=p)
            if s == "remdm":
              o.update(remask_eta=_ETA.value, remask_schedule=_SCHED.value)
            out.append(o)
  return out


def nfe_settings(temps, top_ps, length=None, sigma0_zero=True):
  """The ``--nfe`` sweep (``few_calls.sweep`` x temperature x top-p x draw); with
  ``length`` unknown (flag checking) the grid is checked, not built."""
  nfes = [int(x) for x in _floats("nfe", _NFE.value, 0, 1e9)]
  gammas = _floats("eb_gammas", _GAMMAS.value, -1e-300, 1e9)
  taus = _floats("confidence_taus", _TAUS.value, 0, 1)
  base = few_calls.sweep(_SAMPLERS.value, nfes, length or max(nfes), sigma0_zero,
                         gammas, taus)
  out = []
  for draw in _DRAWS.value:
    for o in base:
      for t in temps:
        for p in top_ps:
          out.append(dict(o, draw=draw, temperature=t, top_p=p))
          if o["sampler"] == "remdm":
            out[-1].update(remask_eta=_ETA.value, remask_schedule=_SCHED.value)
  return out


def plot(rows, data_row, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for s in sorted({r["sampler"] for r in rows}):
    sel = [r for r in rows if r["sampler"] == s]
    ax.scatter([r["unigram_entropy"] for r in sel], [r["gen_perplexity"] for r in sel],
               label=s, s=18, alpha=0.8)
  ax.scatter([data_row["unigram_entropy"]], [data_row["gen_perplexity"]], marker="*",
             s=160, c="k", label="data (validation)")
  ax.axhline(data_row["gen_perplexity"], color="k", lw=0.6, ls=":")
  ax.axvline(data_row["unigram_entropy"], color="k", lw=0.6, ls=":")
  ax.set_xlabel("unigram entropy of samples (nats)")
  ax.set_ylabel("generative perplexity under the judge")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.set_title("generative frontier (down and right is better)", fontsize=10)
  fig.tight_layout()
  return common.save_figure(fig, path)


def main(_):
  common.at_least("num_samples", _NUM.value, 1)
  common.at_least("batch_size", _BATCH.value, 1)
  sweep = settings()
  common.require_run_dir(_WORKDIR.value, "workdir")
  common.require_output_dir(_OUT.value, "outdir")
  common.check_flag(bool(_JUDGE.value), "--judge is required (a causal workdir or "
                    "hf:DIR)")
  common.check_judge_spec(_JUDGE.value)
  log_setup.quiet_libraries()
  cfg = common.with_model_dtype(common.load_config(_WORKDIR.value), _DTYPE.value)
  run = common.load_run(_WORKDIR.value, cfg)
  exp = run.experiment
  if exp.causal:
    raise errors.WorkdirError(f"--workdir {_WORKDIR.value!r} holds a causal model; the "
                              "frontier samples diffusion models")
  judge = common.load_judge(_JUDGE.value, exp.dataset, _CONV.value).bind(
      group_size=min(_BATCH.value, _NUM.value))   # mdlm/duo: per sampling batch
  length = exp.config.data.seq_len
  if _NFE.value:             # the sweep on the NFE axis needs the length and schedule
    sweep = nfe_settings(_floats("temperatures", _TEMPS.value, 0, 1e9),
                         _floats("top_ps", _TOP_PS.value, 0, 1), length,
                         float(exp.schedule.sigma_bar(0.0)) == 0.0)
  n_ref = min(_NUM.value, len(exp.dataset.validation) // length)
  if n_ref == 0:         # e.g. a converted checkpoint without --data: no data point
    raise errors.DataError(f"{_WORKDIR.value!r} has no validation sequence of "
                           f"{length} tokens for the data's point (a converted model: "
                           "convert it with --data=PREPARED_DIR)")
  ref = exp.dataset.validation[:n_ref * length].reshape(-1, length)
  data_row = quality.report(ref, judge)
  print(f"data: gen PPL {data_row['gen_perplexity']:.3f}, unigram entropy "
        f"{data_row['unigram_entropy']:.3f}", flush=True)
  rows = []
  print(f"{'sampler':>14}{'draw':>9}{'steps':>6}{'T':>5}{'top_p':>6}{'nfe':>6}"
        f"{'gen PPL':>9}{'entropy':>9}{'samples/s':>10}", flush=True)
  arrays = {}
  for i, o in enumerate(sweep):
    o = dict(o)
    nfe_target = o.pop("nfe_target", "")
    opts = generate.options(exp.config.get("sampling"), **o)
    x, info = generate.draw(run, _NUM.value, _BATCH.value, length, opts, seed=_SEED.value)
    arrays[f"setting_{i}"] = x
    row = generate.record(x, opts, judge)
    row.update(remask_eta=opts["remask_eta"] if o["sampler"] == "remdm" else "",
               nfe=info["nfe"], samples_per_sec=info["samples_per_sec"])
    if o["sampler"] not in few_calls.GRID:
      row["steps"] = ""
    row["nfe_target"] = nfe_target
    rows.append(row)
    print(f"{row['sampler']:>14}{row['draw']:>9}{str(row['steps']):>6}"
          f"{row['temperature']:>5.2f}{row['top_p']:>6.2f}{row['nfe']:>6}"
          f"{row['gen_perplexity']:>9.3f}{row['unigram_entropy']:>9.3f}"
          f"{row['samples_per_sec']:>10.2f}", flush=True)
  keys = ["sampler", "draw", "steps", "temperature", "top_p", "remask_eta", "nfe",
          "gen_perplexity", "gen_log_perplexity_se", "gen_ppl_tokens", "gen_ppl_convention",
          "unigram_entropy", "judge_unigram_entropy", "samples_per_sec", "num_samples",
          "nfe_target", "unmask_per_call", "events_per_call", "eb_gamma", "confidence_tau"]
  data_csv = dict.fromkeys(keys, "")
  data_csv.update(sampler="data", gen_perplexity=data_row["gen_perplexity"],
                  unigram_entropy=data_row["unigram_entropy"], num_samples=len(ref))
  for k in ("gen_log_perplexity_se", "gen_ppl_tokens", "gen_ppl_convention",
            "judge_unigram_entropy"):
    if k in data_row:
      data_csv[k] = data_row[k]
  common.write_csv(f"{_OUT.value}/frontier.csv", [data_csv] + rows, keys)
  buf = io.BytesIO()                          # the samples, row i of the csv = setting_i
  np.savez_compressed(buf, **arrays)
  fs.write_bytes_atomic(f"{_OUT.value}/samples.npz", buf.getvalue())
  plot(rows, data_row, f"{_OUT.value}/frontier.png")
  if _NFE.value:
    few_calls.plot_nfe([dict(r, label=f"{r['sampler']} T={r['temperature']} "
                                      f"p={r['top_p']}") for r in rows],
                       f"{_OUT.value}/frontier_nfe.png", data_row)
  meta = {**common.provenance(), "workdir": _WORKDIR.value,
          "judge": _JUDGE.value, "step": run.step,
          "dtype": cfg.model.dtype, "gen_ppl_convention": data_row.get("gen_ppl_convention"),
          "judge_step": judge.info.get("step"), "command": " ".join(["python -m experiments.frontier"] + sys.argv[1:])}
  common.write_json(f"{_OUT.value}/frontier.json", meta)
  print(strict_json.dumps(meta))


if __name__ == "__main__":
  cli.run(main)

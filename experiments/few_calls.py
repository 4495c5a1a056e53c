"""Sampler settings on the network-call (NFE) axis, for ``experiments.frontier --nfe``
and the ``few_steps`` study.

A setting is named by the calls it makes per sample:

* grid samplers (``analytic``, ``ancestral``, ``euler``, ``remdm``): ``nfe`` steps on
  the grid ``linspace(1, 0, nfe + 1)``; the last step goes to ``t = 0``, where the
  absorbing step reveals every position left, so no final denoising call is needed when
  the schedule has ``sigma_bar(0) = 0`` (``log_linear``, ``cosine``, ``linear``...);
  otherwise the final call is made and counted.
* ``confidence``: ``k = ceil(L / nfe)`` tokens per call (``ceil(L / k) <= nfe`` calls).
* ``first_hitting``: ``ceil(L / (nfe - 1))`` events per call plus the final denoising
  call (``<= nfe`` calls).
* ``entropy_bound`` and ``confidence_threshold`` choose their calls adaptively: they are
  swept over ``gamma`` / ``tau`` and placed at the calls they made.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

GRID = ("analytic", "ancestral", "euler", "remdm")
ADAPTIVE_PARAM = {"entropy_bound": "eb_gamma", "confidence_threshold": "confidence_tau"}


def options_at(sampler: str, nfe: int, length: int, sigma0_zero: bool = True) -> Dict:
  """``generate.options`` overrides for ``sampler`` at ``nfe`` calls per sample."""
  nfe = int(nfe)
  if nfe < 1:
    raise ValueError(f"nfe must be >= 1, got {nfe}")
  if sampler in GRID:
    return dict(sampler=sampler, steps=nfe, t_end=0.0, final_denoise=not sigma0_zero)
  if sampler == "confidence":
    return dict(sampler=sampler, steps=1, unmask_per_call=math.ceil(length / nfe))
  if sampler == "first_hitting":
    return dict(sampler=sampler, steps=1,
                events_per_call=math.ceil(length / max(nfe - 1, 1)))
  raise ValueError(f"{sampler} chooses its calls adaptively; sweep its "
                   f"{ADAPTIVE_PARAM.get(sampler, 'parameter')} instead")


def sweep(samplers: Sequence[str], nfes: Sequence[int], length: int,
          sigma0_zero: bool = True, eb_gammas: Sequence[float] = (),
          confidence_taus: Sequence[float] = ()) -> List[Dict]:
  """Every setting of the NFE sweep: ``[{..., 'nfe_target': n or None}]``."""
  out = []
  for s in samplers:
    if s in ADAPTIVE_PARAM:
      vals = eb_gammas if s == "entropy_bound" else confidence_taus
      out += [dict(sampler=s, steps=1, nfe_target=None, **{ADAPTIVE_PARAM[s]: float(v)})
              for v in vals]
    else:
      out += [dict(options_at(s, n, length, sigma0_zero), nfe_target=int(n))
              for n in nfes]
  return out


def plot_nfe(rows, path, data_row=None, references=()):
  """Generative perplexity (and entropy) against network calls, one line per sampler.

  ``rows``: dicts with ``label``, ``nfe``, ``gen_perplexity``, ``unigram_entropy`` and
  optional ``gen_ppl_lo``/``gen_ppl_hi`` (an interval); ``references``: ``(label,
  gen_perplexity)`` horizontal lines.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments import common
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for lab in sorted({r["label"] for r in rows}):
    sel = sorted((r for r in rows if r["label"] == lab), key=lambda r: r["nfe"])
    x = [r["nfe"] for r in sel]
    for ax, key in ((axes[0], "gen_perplexity"), (axes[1], "unigram_entropy")):
      (line,) = ax.plot(x, [r[key] for r in sel], "o-", ms=3, label=lab)
      if key == "gen_perplexity" and all("gen_ppl_lo" in r for r in sel):
        ax.fill_between(x, [r["gen_ppl_lo"] for r in sel], [r["gen_ppl_hi"] for r in sel],
                        color=line.get_color(), alpha=0.15)
  for lab, val in references:
    axes[0].axhline(val, ls="--", lw=1, color="gray")
    axes[0].text(0.99, val, lab, transform=axes[0].get_yaxis_transform(), ha="right",
                 va="bottom", fontsize=7, color="gray")
  if data_row is not None:
    axes[1].axhline(data_row["unigram_entropy"], color="k", ls=":", lw=1, label="data")
  axes[0].set_ylabel("generative perplexity under the judge")
  axes[1].set_ylabel("unigram entropy of samples (nats)")
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network calls per sample")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  out = common.save_figure(fig, path)
  plt.close(fig)
  return out

"""A study's outputs: ``summary.csv``, curve plots with +-1 std bands, ``REPORT.md``."""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import common  # noqa: E402
from experiments.study import runner, stats  # noqa: E402
from tcsm_jax import fs  # noqa: E402


def spread_cells(values: np.ndarray) -> str:
  """``median | max | non-finite/n`` table cells of logged values (median and max over
  the finite ones)."""
  fin = values[np.isfinite(values)]
  med, top = (np.median(fin), np.max(fin)) if fin.size else (np.nan, np.nan)
  return f"{med:.3g} | {top:.3g} | {values.size - fin.size}/{values.size}"


def metric_keys(rows: Sequence[dict]) -> List[str]:
  """Numeric columns of ``rows`` beyond the identifying ones, in first-seen order."""
  keys = []
  for r in rows:
    for k, v in r.items():
      if k in ("study", "variant", "seed", "step") or k in keys:
        continue
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        keys.append(k)
  return keys


def write_runs(outdir, rows: Sequence[dict]) -> str:
  keys = runner.ROW_KEYS + [k for k in metric_keys(rows) if k not in runner.ROW_KEYS]
  return common.write_csv(fs.join(outdir, "runs.csv"), rows, keys)


def summarize(rows: Sequence[dict]) -> List[dict]:
  """One row per (variant, step): ``n_seeds`` and ``<metric>_mean`` / ``<metric>_std``
  over the seeds that have the metric at that step."""
  groups: Dict[tuple, List[dict]] = defaultdict(list)
  order = []
  for r in rows:
    key = (r["variant"], int(r["step"]))
    if key not in groups:
      order.append(key)
    groups[key].append(r)
  keys = metric_keys(rows)
  out = []
  names = list(dict.fromkeys(v for v, _ in order))
  for variant, step in sorted(order, key=lambda k: (names.index(k[0]), k[1])):
    rs = groups[(variant, step)]
    row = dict(study=rs[0].get("study", ""), variant=variant, step=step,
               n_seeds=len({r["seed"] for r in rs}))
    for k in keys:
      m, s, n = stats.mean_std(r.get(k) for r in rs if k in r)
      if n:
        row[f"{k}_mean"], row[f"{k}_std"] = m, s
    out.append(row)
  return out


def write_summary(outdir, summary: Sequence[dict]) -> str:
  cols = ["study", "variant", "step", "n_seeds"]
  for r in summary:
    cols += [k for k in r if k not in cols]
  return common.write_csv(fs.join(outdir, "summary.csv"), summary, cols)


def plot_curves(outdir, name: str, summary: Sequence[dict], variants: Sequence[str],
                title: str, metric: str = "nll_bound",
                ylabel: str = "validation NLL bound (nats/token)",
                hline=None, hline_label: str = "") -> str:
  """``<name>.png``: mean curves of ``metric`` vs steps and vs training seconds with
  shaded +-1 std bands over seeds."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  colors = plt.get_cmap("tab20").colors
  finals = []
  for i, v in enumerate(variants):
    pts = sorted((r for r in summary if r["variant"] == v and f"{metric}_mean" in r),
                 key=lambda r: r["step"])
    if not pts:
      continue
    m = np.array([r[f"{metric}_mean"] for r in pts])
    s = np.nan_to_num(np.array([r[f"{metric}_std"] for r in pts]))
    finals.append(m[-1])
    for ax, x in ((axes[0], np.array([r["step"] for r in pts], float)),
                  (axes[1], np.array([r.get("train_time_sec_mean", np.nan)
                                      for r in pts]))):
      ax.plot(x, m, "o-" if i < 10 else "s--", ms=3, color=colors[(2 * i) % 20
                                                                   if i < 10 else
                                                                   (2 * i + 1) % 20],
              label=f"{v} (n={pts[-1]['n_seeds']})")
      ax.fill_between(x, m - s, m + s, color=colors[(2 * i) % 20 if i < 10 else
                                                    (2 * i + 1) % 20], alpha=0.2)
  # Keep the useful range readable: curves far above the typical final value (a
  # diverging objective) leave the top of the axes, as the title says.
  clipped = False
  if finals:
    top = 1.5 * float(np.median(finals))
    clipped = max(finals) > top
    if clipped:
      for ax in axes:
        ax.set_ylim(top=top)
  axes[0].set_xlabel("training steps (equal steps)")
  axes[1].set_xlabel("training time, s, compile excluded (equal wall-clock)")
  for ax in axes:
    if hline is not None:
      ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(title + " (mean +- 1 std over seeds)" +
               ("; diverging curves leave the top" if clipped else ""))
  fig.tight_layout()
  path = common.save_figure(fig, fs.join(outdir, f"{name}.png"))
  plt.close(fig)
  return path


def final_table(rows: Sequence[dict], variants: Sequence[str], metrics: Sequence[str],
                fmt: str = "{:.4f}") -> str:
  """Markdown table of each variant's last-row ``metrics``: mean +- std (n seeds)."""
  head = "| variant | " + " | ".join(metrics) + " | seeds |"
  lines = [head, "|---" * (len(metrics) + 2) + "|"]
  for v in variants:
    cells, n = [], 0
    for k in metrics:
      vals = stats.per_seed(rows, v, k)
      m, s, cnt = stats.mean_std(vals.values())
      n = max(n, cnt)
      cells.append("-" if not cnt else (fmt.format(m) + (
          "" if not np.isfinite(s) else " +- " + fmt.format(s))))
    lines.append(f"| {v} | " + " | ".join(cells) + f" | {n} |")
  return "\n".join(lines)


def write_report(outdir, title: str, claim: str, setup: str, command: str,
                 sections: Sequence[str], verdicts: Sequence[str]) -> str:
  """``REPORT.md``: the claim, the setup and command, result sections, verdicts."""
  sampling_note = ("Samples are drawn with `tcsm_jax.sampling`'s defaults unless the "
                   "setup says otherwise: exact draws (`sampling.draw=exact`), from the "
                   "all-mask state.")
  text = [f"# {title}", "", common.provenance_line("Report written") + " with: "
          f"`{command}`", "", "## Claim", "", claim, "", "## Setup", "", setup, "",
          sampling_note, "", "Command:", "", "```", command, "```", ""]
  text += ["## Results", ""] + [s + "\n" for s in sections]
  text += ["## Verdicts", ""] + [f"- {v}" for v in verdicts] + [""]
  return common.write_text(fs.join(outdir, "REPORT.md"), "\n".join(text))

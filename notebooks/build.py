r"""Executes the notebooks and writes each one's ``.ipynb`` (outputs and plots) next to it.

  python notebooks/build.py                  # every notebook, full run
  python notebooks/build.py 02 --quick       # the ones whose name starts with 02, trimmed

The ``.py`` files (jupytext percent format) are the source; the ``.ipynb`` files are
their executed copies, committed so that a reader sees the results on a code host or in
Colab without running anything. ``tests/test_notebooks.py`` fails when a ``.py`` and
its ``.ipynb`` have different cells (edit the ``.py``, then run this).

Each notebook runs in a fresh ``python3`` kernel (nbclient) on one CPU device, in the
notebooks directory, with its workdirs in a temporary directory. Figures are inline
PNGs at ``--dpi`` (default 60: the files stay well under 1 MB). Execution timestamps
and kernel ids are dropped, so a rebuild changes only what the outputs show.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import jupytext
import nbclient
import nbformat

NB_DIR = pathlib.Path(__file__).resolve().parent
REPO = NB_DIR.parent
MAX_BYTES = 1 << 20           # what tests/test_notebooks.py accepts per .ipynb


def sources() -> list:
  """The notebooks' ``.py`` files, in order."""
  return sorted(NB_DIR.glob("[0-9][0-9]_*.py"))


def kernel_env(quick: bool, tmp: pathlib.Path, dpi: int = 60) -> dict:
  """A kernel's environment: one CPU device, workdirs and compilation cache in ``tmp``,
  inline figures at ``dpi``."""
  (tmp / "work").mkdir(parents=True, exist_ok=True)
  env = dict(os.environ)
  env.update(TCSM_NB_QUICK="1" if quick else "0", TCSM_NB_WORKDIR=str(tmp / "work"),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                      env.get("PYTHONPATH")])))
  env.pop("MPLBACKEND", None)         # the kernel's inline backend (renders with Agg)
  env["TCSM_NB_DPI"] = str(dpi)
  return env


# Runs before the notebook's cells (not saved): inline figures at TCSM_NB_DPI.
_SETUP = ("import os, matplotlib.pyplot as _plt, matplotlib_inline.backend_inline as _b\n"
          "_dpi = int(os.environ.get('TCSM_NB_DPI', 60))\n"
          "_plt.rcParams['figure.dpi'] = _dpi\n"
          "_b.set_matplotlib_formats('png', dpi=_dpi)\n")


def execute(py: pathlib.Path, quick: bool, tmp: pathlib.Path, dpi: int = 60,
            timeout: int = 1200) -> nbformat.NotebookNode:
  """The notebook of ``py`` executed in a fresh kernel (raises on a failing cell)."""
  nb = jupytext.read(py)
  nb.cells.insert(0, nbformat.v4.new_code_cell(_SETUP))
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                   resources={"metadata": {"path": str(NB_DIR)}})
  client.execute(env=kernel_env(quick, tmp, dpi))
  nb.cells.pop(0)
  return nb


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """Drops what changes at every run without changing what a reader sees."""
  nb.metadata.pop("widgets", None)
  for i, cell in enumerate(nb.cells):
    cell.metadata.pop("execution", None)
    cell["id"] = f"cell-{i}"
    if cell.cell_type == "code":
      cell.execution_count = i + 1 if cell.execution_count else None
      for o in cell.outputs:
        if "execution_count" in o:
          o.execution_count = cell.execution_count
  return nb


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("names", nargs="*", help="name prefixes (default: every notebook)")
  ap.add_argument("--quick", action="store_true", help="the trimmed run (TCSM_NB_QUICK)")
  ap.add_argument("--dpi", type=int, default=60)
  args = ap.parse_args(argv)
  chosen = [p for p in sources() if not args.names
            or any(p.name.startswith(n) for n in args.names)]
  if not chosen:
    print(f"error: no notebook matches {args.names}", file=sys.stderr)
    return 2
  for py in chosen:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="tcsm_nb_") as tmp:
      nb = clean(execute(py, args.quick, pathlib.Path(tmp), args.dpi))
    out = py.with_suffix(".ipynb")
    nbformat.write(nb, out)
    size = out.stat().st_size
    print(f"{out.relative_to(REPO)}: {time.time() - t0:.0f} s, {size / 1024:.0f} KiB"
          + ("  (over 1 MiB: lower --dpi)" if size > MAX_BYTES else ""), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

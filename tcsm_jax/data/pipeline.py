"""The data package's front door: ``load(config, workdir)`` and the loader table.

``LOADERS[data.name](config.data, workdir) -> TokenDataset``. The loaders live in their
own modules, which import only ``base`` (the dataset, the sampler) and never this
module, so dependencies point one way: ``pipeline -> loaders -> base``. A higher layer
adds a dataset with ``register_loader(name, fn)`` instead of this module importing it.

Deterministic, seeded, per-host sharded batches that resume at any step:
``ChunkSampler`` (see ``base``). Re-exported here for the code that imports them from
``pipeline``: ``TokenDataset``, ``ChunkSampler``, ``eval_batches``, ``stats``,
``encode_text``, ``load_bundled``, ``load_text8``, ``load_text_file``.
"""

from __future__ import annotations

from typing import Callable, Dict

import ml_collections

from tcsm_jax import errors
from tcsm_jax.data import base, char_corpora, prepared, sources, synthetic, text8, wordpiece

TokenDataset = base.TokenDataset
ChunkSampler = base.ChunkSampler
eval_batches = base.eval_batches
stats = base.stats
LAYOUTS = base.LAYOUTS
encode_text = text8.encode_text
load_bundled = char_corpora.load_bundled
load_text8 = char_corpora.load_text8
load_text_file = char_corpora.load_text_file
BUNDLED_PATH = char_corpora.BUNDLED_PATH


def _packed_only(name: str, fn: Callable) -> Callable:
  """A character corpus is one text: it has no documents to pad one per row."""

  def load_fn(data_cfg, workdir=""):
    del workdir
    layout = data_cfg.get("layout", "packed") or "packed"
    if layout != "packed":
      raise errors.ConfigError(f"data.name={name!r} is one continuous text; "
                               f"data.layout={layout!r} needs documents (wordpiece or "
                               "prepared data)")
    return fn(data_cfg)

  return load_fn


def _text_file(data_cfg):
  return char_corpora.load_text_file(
      data_cfg.path, max_dropped=float(data_cfg.get("max_dropped_fraction",
                                                    sources.MAX_DROPPED_FRACTION)))


# data.name -> loader(config.data, workdir) -> TokenDataset
LOADERS: Dict[str, Callable[..., TokenDataset]] = {
    "bundled": _packed_only("bundled", lambda c: char_corpora.load_bundled()),
    "text8": _packed_only("text8", lambda c: char_corpora.load_text8(c.path)),
    "text_file": _packed_only("text_file", _text_file),
    "wordpiece": wordpiece.load,
    "markov": _packed_only("markov", synthetic.load),
    "prepared": prepared.load_from_config,
}


def register_loader(name: str, fn: Callable[..., TokenDataset]) -> None:
  """Adds (or replaces) ``data.name=name``: ``fn(config.data, workdir) -> TokenDataset``."""
  LOADERS[name] = fn


def load(config: ml_collections.ConfigDict, workdir: str = "") -> TokenDataset:
  """Loads the dataset named by ``config.data.name`` (``workdir`` keeps a trained
  sentencepiece model for word-piece data)."""
  name = config.data.name
  if name not in LOADERS:
    raise errors.ConfigError(f"unknown data.name {name!r}; choose one of "
                             f"{', '.join(sorted(LOADERS))}")
  return LOADERS[name](config.data, workdir)

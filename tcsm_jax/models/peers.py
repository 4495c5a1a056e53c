"""Checkpoints of MDLM, SEDD and DUO, read from a local directory into ``DiT`` parameters.

``read(kind, directory) -> Imported``: the peer's config and weights, mapped to this
project's ``model.arch = dit`` hyper-parameters, its process, its schedule and a Flax
parameter tree (NumPy float32). Nothing is downloaded: the directory is what
``huggingface-cli download`` (or the peer's own ``save_pretrained``) leaves.

Formats (each peer's published one):

* ``mdlm`` (``kuleshov-group/mdlm-owt``): ``config.json`` of MDLM's ``MDLMConfig``
  (``vocab_size`` = GPT-2's 50,257 + the mask, ``hidden_dim``, ``cond_dim``,
  ``n_blocks``, ``n_heads``, ``model_length``, ``time_conditioning``) and
  ``model.safetensors`` with the ``backbone.`` prefix. Absorbing process, SUBS,
  MDLM's log-linear schedule (``eps = 1e-3``), conditioned on 0 unless
  ``time_conditioning``.
* ``sedd`` (``louaaron/sedd-small``, ``-medium``): ``PyTorchModelHubMixin`` layout,
  ``config.json`` = SEDD's hydra config (``tokens``, ``graph.type``, ``noise``,
  ``model.hidden_size`` ...) and the weights. Absorbing graph only (the published
  checkpoints; SEDD's ``scale_by_sigma`` is defined only there); ``noise.type``
  ``loglinear`` (``eps = 1e-3``) or ``geometric`` (``sigma_min``, ``sigma_max``).
  Always conditioned on ``sigma``.
* ``duo`` (``s-sahoo/duo-*``): ``config.json`` of DUO's ``DUOConfig`` (as MDLM's, plus
  ``causal``) and ``model.safetensors`` under ``backbone.``; uniform process over its
  ``vocab_size`` states, "mean" parameterization, DUO's log-linear schedule
  (``alpha_t = 1 - (1 - 1e-3) t``, so ``sigma_bar = -log alpha_t``), conditioned on
  ``sigma_bar``.

A hydra-style config (``{"model": {"hidden_size": ...}, ...}``, what the peers'
``PyTorchModelHubMixin`` writes) is accepted for every kind. Weights: ``model.safetensors``
(read with the ``safetensors`` package) or a PyTorch ``torch.save`` zip checkpoint
(``pytorch_model.bin``, ``*.pth``, ``*.ckpt``; a state dict, possibly under ``model``
or ``state_dict``), read by ``torch_zip.load`` with NumPy alone. Keys may carry
``backbone.`` / ``module.`` prefixes; an unknown key, a missing key or a shape that
disagrees with the config is a ``CheckpointFormatError`` naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np

from tcsm_jax import errors, fs
from tcsm_jax.models import torch_zip

KINDS = ("mdlm", "sedd", "duo")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth",
                "model.ckpt")
LOG_LINEAR_EPS = 1e-3        # MDLM's LogLinearNoise, SEDD's, DUO's LogLinear default
_PREFIXES = ("backbone.", "module.", "model.")


class CheckpointFormatError(errors.UserError, ValueError):
  """A peer checkpoint directory that cannot be read as the kind it was named."""


@dataclasses.dataclass
class Imported:
  """A peer checkpoint mapped to this project.

  Attributes:
    kind: ``mdlm`` | ``sedd`` | ``duo``.
    vocab_size: clean tokens ``V`` (the denoiser's output).
    rows: the peer's embedding / output rows (``V + 1`` absorbing, ``V`` uniform).
    process: ``absorbing`` | ``uniform``.
    schedule: ``config.schedule`` values (``name`` and its arguments).
    model: ``config.model`` overrides of a ``dit`` model.
    max_length: the peer's ``model_length`` / ``model.length``.
    params: the Flax parameter tree of ``models.dit.DiT`` (NumPy float32).
    files: ``{file name: {"sha256", "bytes"}}`` of what was read.
    peer_config: the peer's ``config.json``.
  """

  kind: str
  vocab_size: int
  rows: int
  process: str
  schedule: Dict[str, Any]
  model: Dict[str, Any]
  max_length: int
  params: Dict[str, Any]
  files: Dict[str, Dict[str, Any]]
  peer_config: Dict[str, Any]
  weights_dtype: str = "float32"


def _err(directory, msg) -> CheckpointFormatError:
  return CheckpointFormatError(f"{os.fspath(directory)!r}: {msg}")


def _sha(data: bytes) -> Dict[str, Any]:
  return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _hparams(kind: str, cfg: Dict[str, Any], directory) -> Dict[str, Any]:
  """``{width, num_heads, num_layers, cond_width, max_length, rows?, time_conditioning,
  process, schedule}`` from the peer's config (HF or hydra layout)."""
  if isinstance(cfg.get("model"), dict):                      # hydra layout
    m = cfg["model"]
    need = ("hidden_size", "n_heads", "n_blocks", "cond_dim")
    miss = [k for k in need if k not in m]
    if miss:
      raise _err(directory, f"config.json model section lacks {miss}")
    out = dict(width=m["hidden_size"], num_heads=m["n_heads"], num_layers=m["n_blocks"],
               cond_width=m["cond_dim"], max_length=m.get("length", 1024),
               dropout=m.get("dropout", 0.0))
    algo = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}
    tc = cfg.get("time_conditioning", algo.get("time_conditioning"))
    noise = cfg.get("noise") if isinstance(cfg.get("noise"), dict) else {}
    graph = (cfg.get("graph") or {}).get("type") if isinstance(cfg.get("graph"),
                                                                dict) else None
    tokens = cfg.get("tokens")
    if algo.get("causal_attention"):
      raise _err(directory, "config.json describes a causal (AR) model, not a diffusion DiT")
  else:                                                        # HF transformers layout
    need = ("hidden_dim", "n_heads", "n_blocks", "cond_dim", "vocab_size")
    miss = [k for k in need if k not in cfg]
    if miss:
      raise _err(directory, f"config.json is neither MDLM/DUO's (missing {miss}) nor a "
                 "hydra config with a model section")
    out = dict(width=cfg["hidden_dim"], num_heads=cfg["n_heads"],
               num_layers=cfg["n_blocks"], cond_width=cfg["cond_dim"],
               max_length=cfg.get("model_length", 1024), dropout=cfg.get("dropout", 0.0),
               rows=cfg["vocab_size"])
    if cfg.get("causal"):
      raise _err(directory, "config.json describes a causal (AR) model, not a diffusion DiT")
    tc, noise, graph, tokens = cfg.get("time_conditioning"), {}, None, None
    algo = {}
  param = cfg.get("parameterization", algo.get("parameterization") if isinstance(
      cfg.get("model"), dict) else None)
  want = {"mdlm": "subs", "duo": "mean", "sedd": None}[kind]
  if param is not None and want is not None and param != want:
    raise _err(directory, f"config.json has parameterization {param!r}; a {kind} "
               f"checkpoint maps only from {want!r}")
  if kind == "mdlm":
    out.update(process="absorbing", time_conditioning=bool(tc) if tc is not None else False)
    ntype = noise.get("type", "loglinear")
    if ntype not in ("loglinear", "log-linear"):
      raise _err(directory, f"MDLM noise.type {ntype!r} is not supported (loglinear)")
    out["schedule"] = {"name": "log_linear", "eps": LOG_LINEAR_EPS}
  elif kind == "sedd":
    if graph not in (None, "absorb"):
      raise _err(directory, f"SEDD graph.type {graph!r}: only the absorbing graph's score "
                 "maps to a denoiser (the published checkpoints are absorb)")
    out.update(process="absorbing", time_conditioning=True)
    ntype = noise.get("type", "loglinear")
    if ntype == "loglinear":
      out["schedule"] = {"name": "log_linear", "eps": LOG_LINEAR_EPS}
    elif ntype == "geometric":
      out["schedule"] = {"name": "geometric", "sigma_min": float(noise["sigma_min"]),
                         "sigma_max": float(noise["sigma_max"])}
    else:
      raise _err(directory, f"SEDD noise.type {ntype!r} is not one of loglinear, geometric")
    if tokens is not None:
      out["rows"] = int(tokens) + 1
  else:
    out.update(process="uniform", time_conditioning=True)
    ntype = noise.get("type", "log-linear")
    if ntype not in ("log-linear", "loglinear"):
      raise _err(directory, f"DUO noise.type {ntype!r} is not supported (log-linear)")
    out["schedule"] = {"name": "log_linear",
                       "eps": float(noise.get("eps", LOG_LINEAR_EPS))}
  for k in ("width", "num_heads", "num_layers", "cond_width", "max_length"):
    if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 1:
      raise _err(directory, f"config.json gives {k} = {out[k]!r}")
  return out


def _read_weights(directory) -> Tuple[Dict[str, np.ndarray], Dict[str, Any], str]:
  """``(state dict of float32 arrays, {file: sha}, source dtype)``."""
  for name in WEIGHT_FILES:
    path = fs.join(directory, name)
    if fs.exists(path):
      break
  else:
    raise _err(directory, f"no weights: expected one of {', '.join(WEIGHT_FILES)}")
  raw = fs.read_bytes(path)
  files = {name: _sha(raw)}
  if name.endswith(".safetensors"):
    try:
      import safetensors.numpy
      state = safetensors.numpy.load(raw)
    except Exception as e:  # pylint: disable=broad-except
      if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
        raise _err(directory, f"{name} is not a safetensors file ({e})") from e
      state = torch_zip.load_safetensors_bytes(raw)
  else:
    try:
      state = torch_zip.load_bytes(raw)
    except torch_zip.FormatError as e:
      raise _err(directory, f"{name}: {e}") from e
    for key in ("state_dict", "model"):                # Lightning / SEDD training ckpts
      if isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
  if not isinstance(state, dict) or not state:
    raise _err(directory, f"{name} holds no state dict")
  dtypes = {str(np.asarray(v).dtype) for v in state.values()}
  out = {}
  for k, v in state.items():
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.floating) and v.dtype.name != "bfloat16":
      raise _err(directory, f"{name}: key {k!r} holds {v.dtype} values, not weights")
    out[k] = v.astype(np.float32)
  return out, files, "/".join(sorted(dtypes))


_BLOCK = {"norm1.weight": ("norm1", "weight", False),
          "norm2.weight": ("norm2", "weight", False),
          "attn_qkv.weight": ("attn_qkv", "kernel", True),
          "attn_out.weight": ("attn_out", "kernel", True),
          "mlp.0.weight": ("mlp_0", "kernel", True), "mlp.0.bias": ("mlp_0", "bias", False),
          "mlp.2.weight": ("mlp_2", "kernel", True), "mlp.2.bias": ("mlp_2", "bias", False),
          "adaLN_modulation.weight": ("adaLN_modulation", "kernel", True),
          "adaLN_modulation.bias": ("adaLN_modulation", "bias", False)}
_TOP = {"sigma_map.mlp.0.weight": ("sigma_map_0", "kernel", True),
        "sigma_map.mlp.0.bias": ("sigma_map_0", "bias", False),
        "sigma_map.mlp.2.weight": ("sigma_map_2", "kernel", True),
        "sigma_map.mlp.2.bias": ("sigma_map_2", "bias", False),
        "output_layer.norm_final.weight": ("norm_final", "weight", False),
        "output_layer.linear.weight": ("final_linear", "kernel", True),
        "output_layer.linear.bias": ("final_linear", "bias", False),
        "output_layer.adaLN_modulation.weight": ("final_adaLN_modulation", "kernel", True),
        "output_layer.adaLN_modulation.bias": ("final_adaLN_modulation", "bias", False)}


def _strip(key: str) -> str:
  changed = True
  while changed:
    changed = False
    for p in _PREFIXES:
      if key.startswith(p):
        key, changed = key[len(p):], True
  return key


def map_state(state: Dict[str, np.ndarray], num_layers: int, width: int,
              directory="") -> Dict[str, Any]:
  """The peer's state dict (torch names, ``Linear`` weights ``[out, in]``) as the Flax
  tree of ``DiT`` (kernels ``[in, out]``). Raises on an unknown or missing key."""
  params: Dict[str, Any] = {}
  seen = set()
  for key, v in state.items():
    k = _strip(key)
    if k.startswith("rotary_emb."):                     # a buffer: check it, keep nothing
      dim = 2 * v.shape[-1]
      want = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
      if k != "rotary_emb.inv_freq" or not np.allclose(v, want, rtol=1e-2):  # bf16 too
        raise _err(directory, f"key {key!r}: not the rotary base 10000 the DiT uses")
      continue
    if k == "vocab_embed.embedding":
      params["vocab_embed"] = v
      seen.add(k)
      continue
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
    if m and m.group(2) in _BLOCK and int(m.group(1)) < num_layers:
      mod, leaf, transpose = _BLOCK[m.group(2)]
      params.setdefault(f"blocks_{int(m.group(1))}", {}).setdefault(mod, {})[leaf] = (
          v.T if transpose else v)
    elif k in _TOP:
      mod, leaf, transpose = _TOP[k]
      params.setdefault(mod, {})[leaf] = v.T if transpose else v
    else:
      raise _err(directory, f"unknown key {key!r} in the weights (not a DiT of "
                 f"{num_layers} blocks)")
    seen.add(k)
  want = {"vocab_embed.embedding", *_TOP} | {f"blocks.{i}.{b}" for i in range(num_layers)
                                             for b in _BLOCK}
  missing = sorted(want - seen)
  if missing:
    raise _err(directory, f"the weights lack {len(missing)} key(s), first {missing[0]!r}")
  if params["vocab_embed"].shape[1] != width:
    raise _err(directory, f"the embedding has width {params['vocab_embed'].shape[1]}, "
               f"config.json says {width}")
  return params


def read(kind: str, directory) -> Imported:
  """Reads a peer checkpoint directory (module docstring). Raises
  ``CheckpointFormatError`` (a ``UserError``) on anything it cannot map."""
  if kind not in KINDS:
    raise CheckpointFormatError(f"unknown checkpoint kind {kind!r}; choose one of "
                                f"{', '.join(KINDS)}")
  if not fs.isdir(directory):
    raise CheckpointFormatError(f"{os.fspath(directory)!r} is not a directory")
  cpath = fs.join(directory, "config.json")
  if not fs.exists(cpath):
    raise _err(directory, "no config.json")
  craw = fs.read_bytes(cpath)
  try:
    cfg = json.loads(craw)
  except ValueError as e:
    raise _err(directory, f"config.json is not JSON ({e})") from e
  if not isinstance(cfg, dict):
    raise _err(directory, "config.json is not a JSON object")
  mtype = cfg.get("model_type")
  if isinstance(mtype, str) and mtype.lower() in KINDS and mtype.lower() != kind:
    raise _err(directory, f"config.json is a {mtype!r} checkpoint, not {kind!r} (use "
               f"--from={mtype.lower()}:DIR)")
  h = _hparams(kind, cfg, directory)
  state, files, dtype = _read_weights(directory)
  files["config.json"] = _sha(craw)
  params = map_state(state, h["num_layers"], h["width"], directory)
  rows = params["vocab_embed"].shape[0]
  if h.get("rows", rows) != rows:
    raise _err(directory, f"the embedding has {rows} rows, config.json implies "
               f"{h['rows']}")
  out_rows = params["final_linear"]["kernel"].shape[1]
  if out_rows != rows:
    raise _err(directory, f"the output layer has {out_rows} rows, the embedding {rows}")
  cond = params["sigma_map_2"]["kernel"].shape[1]
  if cond != h["cond_width"]:
    raise _err(directory, f"cond_dim is {cond} in the weights, {h['cond_width']} in "
               "config.json")
  if h["width"] % h["num_heads"] or (h["width"] // h["num_heads"]) % 2:
    raise _err(directory, f"hidden size {h['width']} does not split into {h['num_heads']} "
               "heads of an even dimension")
  mlp = params["blocks_0"]["mlp_0"]["kernel"].shape[1]
  if mlp % h["width"]:
    raise _err(directory, f"MLP width {mlp} is not a multiple of {h['width']}")
  vocab = rows - 1 if h["process"] == "absorbing" else rows
  model = dict(arch="dit", num_layers=h["num_layers"], width=h["width"],
               num_heads=h["num_heads"], cond_width=h["cond_width"],
               mlp_ratio=mlp // h["width"], time_conditioning=h["time_conditioning"],
               dropout=float(h.get("dropout") or 0.0))    # the peer's training dropout
  return Imported(kind=kind, vocab_size=vocab, rows=rows, process=h["process"],
                  schedule=h["schedule"], model=model, max_length=h["max_length"],
                  params=params, files=files, peer_config=cfg, weights_dtype=dtype)

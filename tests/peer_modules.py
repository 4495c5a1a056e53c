"""The peers' own PyTorch DiT modules (MDLM, SEDD, DUO), for the parity tests and fixtures.

Used only by ``tests/test_diffusion_parity.py`` and ``tests/fixtures/make_peer_fixtures.py``
(it needs torch: the ``parity`` extra). The modules are imported from each peer's own
repository at test time, never copied into the project:

* a checkout named by ``TCSM_PEER_MDLM`` / ``TCSM_PEER_SEDD`` / ``TCSM_PEER_DUO``, or
* a fetched bare mirror (``/work/.mirror/<owner>+<name>/repo``, or the directory in
  ``TCSM_PEER_MIRRORS``), whose ``HEAD`` is exported to a temporary directory.

**The CUDA-only kernels are replaced by their reference math** (the peers import
``flash_attn`` at module level): ``flash_attn_varlen_qkvpacked_func`` with equal-length
sequences is softmax attention over each sequence (scale ``1/sqrt(head_dim)``);
``apply_rotary_emb_qkv_`` / ``apply_rotary_emb_torch`` with ``interleaved=False`` rotate
the two halves of ``q`` and ``k`` (GPT-NeoX ``rotate_half``). ``omegaconf`` (used only to
turn a dict config into attributes) is stubbed when it is not installed.

Random weights: ``randomize(module, seed)`` replaces every parameter (the adaLN and
output layers start at zero in the peers, which would make every output trivially 0).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from typing import Dict, Optional

REPOS = {"mdlm": ("kuleshov-group/mdlm", "TCSM_PEER_MDLM"),
         "sedd": ("louaaron/Score-Entropy-Discrete-Diffusion", "TCSM_PEER_SEDD"),
         "duo": ("s-sahoo/duo", "TCSM_PEER_DUO")}
_EXPORTED: Dict[str, str] = {}


def repo_dir(kind: str) -> Optional[str]:
  """A directory holding the peer's repository files, or None (then the tests skip)."""
  full, env = REPOS[kind]
  if os.environ.get(env):
    return os.environ[env] if os.path.isdir(os.environ[env]) else None
  if kind in _EXPORTED:
    return _EXPORTED[kind]
  mirrors = os.environ.get("TCSM_PEER_MIRRORS", "/work/.mirror")
  git_dir = os.path.join(mirrors, full.replace("/", "+"), "repo")
  if not os.path.isdir(git_dir):
    return None
  out = tempfile.mkdtemp(prefix=f"peer_{kind}_")
  archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD"],
                           check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
  _EXPORTED[kind] = out
  return out


def _stub_kernels():
  """``flash_attn`` (and ``omegaconf`` if absent) replaced by reference math."""
  import torch
  import torch.nn.functional as F

  def rotate(x, cos, sin):
    """x [b, s, h, d]; cos/sin [s, d/2]: non-interleaved rotary."""
    d2 = cos.shape[-1]
    x1, x2 = x[..., :d2], x[..., d2:2 * d2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    rot = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)
    return torch.cat([rot, x[..., 2 * d2:]], -1)

  def apply_rotary_emb_qkv_(qkv, cos, sin, *args, **kwargs):
    qkv[:, :, 0] = rotate(qkv[:, :, 0], cos, sin)
    qkv[:, :, 1] = rotate(qkv[:, :, 1], cos, sin)
    return qkv

  def apply_rotary_emb_torch(x, cos, sin, interleaved=False):
    assert not interleaved
    return rotate(x, cos, sin)

  def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                       causal=False, **kwargs):
    """qkv [(b s), 3, h, d] with equal lengths -> [(b s), h, d]."""
    assert dropout_p == 0.0 and not causal
    n = int(cu_seqlens.shape[0]) - 1
    q, k, v = qkv.reshape(n, max_seqlen, 3, *qkv.shape[2:]).unbind(2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2))
    return out.transpose(1, 2).reshape(n * max_seqlen, *qkv.shape[2:])

  fa = types.ModuleType("flash_attn")
  layers = types.ModuleType("flash_attn.layers")
  rotary = types.ModuleType("flash_attn.layers.rotary")
  iface = types.ModuleType("flash_attn.flash_attn_interface")
  rotary.apply_rotary_emb_qkv_ = apply_rotary_emb_qkv_
  rotary.apply_rotary_emb_torch = apply_rotary_emb_torch
  iface.flash_attn_varlen_qkvpacked_func = flash_attn_varlen_qkvpacked_func
  fa.layers, layers.rotary, fa.flash_attn_interface = layers, rotary, iface
  sys.modules.update({"flash_attn": fa, "flash_attn.layers": layers,
                      "flash_attn.layers.rotary": rotary,
                      "flash_attn.flash_attn_interface": iface})
  try:
    import omegaconf  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    oc = types.ModuleType("omegaconf")

    class _Attrs(dict):
      __getattr__ = dict.__getitem__

    def create(d):
      return _Attrs({k: create(v) if isinstance(v, dict) else v for k, v in d.items()})

    oc.OmegaConf = types.SimpleNamespace(create=create)
    sys.modules["omegaconf"] = oc


def _load(name: str, path: str, package_dir: Optional[str] = None):
  if name in sys.modules:
    return sys.modules[name]
  _stub_kernels()
  spec = importlib.util.spec_from_file_location(
      name, path, submodule_search_locations=[package_dir] if package_dir else None)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


def peer_method(kind: str, relpath: str, cls: str, method: str):
  """A method of a class in a peer file, compiled from the peer's own source alone
  (for files whose imports need their training stack: lightning, hydra)."""
  import numpy as np
  import torch
  src = open(os.path.join(repo_dir(kind), relpath)).read()
  for node in ast.parse(src).body:
    if isinstance(node, ast.ClassDef) and node.name == cls:
      for fn in node.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == method:
          ns = {"torch": torch, "np": np, "F": torch.nn.functional, "math": math}
          exec(compile(ast.Module([fn], []), relpath, "exec"), ns)  # pylint: disable=exec-used
          return ns[method]
  raise LookupError(f"{cls}.{method} not in {relpath}")


def tiny_hparams(vocab: int = 64, width: int = 64, heads: int = 4, layers: int = 2,
                 cond: int = 32, length: int = 16):
  return dict(vocab=vocab, width=width, heads=heads, layers=layers, cond=cond,
              length=length)


def build(kind: str, h: Dict, time_conditioning: bool = True):
  """The peer's own module with the tiny shape ``h``; returns ``(module, saver)``.

  ``saver(directory)`` writes it in the format the peer publishes:
  MDLM / DUO: a Hugging Face ``transformers`` directory (``config.json`` of their
  ``MDLMConfig`` / ``DUOConfig`` keys, ``model.safetensors`` under ``backbone.``);
  SEDD: ``PyTorchModelHubMixin.save_pretrained`` (``config.json`` = its hydra config,
  ``model.safetensors``).
  """
  import safetensors.torch
  root = repo_dir(kind)
  model_cfg = dict(hidden_size=h["width"], cond_dim=h["cond"], n_heads=h["heads"],
                   n_blocks=h["layers"], dropout=0.1, scale_by_sigma=True,
                   length=h["length"])
  if kind == "mdlm":
    mod = _load("peer_mdlm_dit", os.path.join(root, "models", "dit.py"))
    rows = h["vocab"] + 1
    net = mod.DIT({"model": model_cfg}, vocab_size=rows)
    hf = dict(model_type="mdlm", vocab_size=rows, model_length=h["length"],
              hidden_dim=h["width"], cond_dim=h["cond"], n_blocks=h["layers"],
              n_heads=h["heads"], dropout=0.1, time_conditioning=time_conditioning)
  elif kind == "duo":
    mod = _load("peer_duo_dit", os.path.join(root, "models", "dit.py"))
    rows = h["vocab"]
    net = mod.DIT({"model": model_cfg, "algo": {"causal_attention": False}},
                  vocab_size=rows)
    hf = dict(model_type="duo", vocab_size=rows, model_length=h["length"], causal=False,
              hidden_dim=h["width"], cond_dim=h["cond"], n_blocks=h["layers"],
              n_heads=h["heads"], dropout=0.1, var_min=True)
  elif kind == "sedd":
    pkg = _load("peer_sedd_model", os.path.join(root, "model", "__init__.py"),
                os.path.join(root, "model"))
    cfg = {"tokens": h["vocab"], "graph": {"type": "absorb"},
           "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
           "model": dict(model_cfg, name="tiny", type="ddit")}
    net = pkg.SEDD(cfg)

    def save_sedd(directory):
      net.save_pretrained(directory, config=cfg)
      # huggingface_hub versions differ in what they write; the published layout is
      # config.json (the hydra config) + weights.
      with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return net, save_sedd
  else:
    raise ValueError(kind)

  def save_hf(directory):
    os.makedirs(directory, exist_ok=True)
    state = {f"backbone.{k}": v.contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(hf, f, indent=2)
  return net, save_hf


def randomize(net, seed: int = 0) -> None:
  """Every parameter redrawn (seeded): norms ~ 1 + 0.1 N, matrices ~ N / sqrt(fan-in),
  vectors ~ 0.1 N."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in net.named_parameters():
      z = torch.randn(p.shape, generator=g, dtype=torch.float32)
      if "norm" in name:
        p.copy_(1.0 + 0.1 * z)
      elif p.ndim == 2:
        p.copy_(z / math.sqrt(p.shape[1]) if "embed" not in name else z)
      else:
        p.copy_(0.1 * z)


def reference_outputs(kind: str, net, x_t, sigma, vocab: int, time_conditioning: bool):
  """The peer's own outputs on ``x_t [b, L]`` (int64) and ``sigma [b]`` (float32):
  ``{"raw": backbone logits, "peer": the peer's parameterized output}``:
  MDLM: ``Diffusion._subs_parameterization`` (log-probabilities, carry-over included),
  with ``_process_sigma``'s zeroing when not time-conditioned;
  SEDD: the module's log score (``scale_by_sigma`` and the scatter included);
  DUO: ``DUO_BASE._process_model_output`` (``log_softmax``)."""
  import torch
  net.eval()
  with torch.no_grad():
    if kind == "mdlm":
      s = sigma if time_conditioning else torch.zeros_like(sigma)
      raw = net(x_t, s)
      subs = peer_method("mdlm", "diffusion.py", "Diffusion", "_subs_parameterization")
      me = types.SimpleNamespace(mask_index=vocab, neg_infinity=-1000000.0)
      peer = subs(me, raw.clone(), x_t)
    elif kind == "sedd":
      raw = None
      peer = net(x_t, sigma)
    else:
      raw = net(x_t, sigma)
      out = peer_method("duo", "algo.py", "DUO_BASE", "_process_model_output")
      peer = out(None, raw.clone(), x_t, sigma)
  return {"raw": None if raw is None else raw.numpy(), "peer": peer.numpy()}

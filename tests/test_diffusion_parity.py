"""Parity with the peers' own PyTorch modules on random weights (the ``parity`` extra).

Each test builds the peer's module from its own repository (``tests/peer_modules.py``:
``TCSM_PEER_MDLM`` / ``_SEDD`` / ``_DUO`` checkouts or fetched mirrors; flash-attn
replaced by its reference math), draws random weights, saves them in the peer's
published format, reads them with ``tcsm_jax.models.peers`` and compares the DiT's
output with the module's, in float32, to 1e-4. Skipped (with the reason) without torch,
safetensors or the peer's repository. Run with

    pip install -e .[parity]
    python -m pytest -n 0 tests/test_diffusion_parity.py
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e "
                            ".[parity])")
pytest.importorskip("safetensors.torch", reason="parity tests need safetensors")
pytest.importorskip("einops", reason="the peers' modules import einops")
pytest.importorskip("huggingface_hub", reason="the peers' modules import huggingface_hub")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import peer_modules as pm  # noqa: E402
from tcsm_jax.models import peers  # noqa: E402
from tcsm_jax.training import imports  # noqa: E402

from test_pretrained import dit_of, make_tokenizer  # noqa: E402

ATOL = 1e-4


def _need(kind):
  if pm.repo_dir(kind) is None:
    full, env = pm.REPOS[kind]
    pytest.skip(f"{full} is not here: set {env} to a checkout (or fetch its mirror)")


def _inputs(kind, h, seed, batch=4):
  g = torch.Generator().manual_seed(seed)
  rows = h["vocab"] + (0 if kind == "duo" else 1)
  x = torch.randint(0, rows, (batch, h["length"]), generator=g)
  if kind != "duo":
    x[:, ::3] = h["vocab"]
  sigma = torch.tensor([1e-3, 0.3, 2.0, 9.0][:batch])
  return x, sigma


def _ours(directory, kind, x, sigma):
  imp = peers.read(kind, directory)
  out = jax.jit(dit_of(imp).apply)({"params": imp.params}, jnp.asarray(x.numpy()),
                                   jnp.asarray(sigma.numpy()))
  return imp, np.asarray(out)


@pytest.mark.parametrize("kind,tc,seed", [("mdlm", False, 0), ("mdlm", True, 1),
                                          ("sedd", True, 2), ("duo", True, 3)])
def test_logits_match_the_peers_module(tmp_path, kind, tc, seed):
  """Random weights (a wider model than the fixtures: 3 blocks, width 96, 6 heads),
  saved as the peer publishes them: the DiT's logits equal the module's to 1e-4 and
  the peer's parameterized output maps to the project's denoiser."""
  _need(kind)
  h = pm.tiny_hparams(vocab=50, width=96, heads=6, layers=3, cond=48, length=24)
  net, save = pm.build(kind, h, time_conditioning=tc)
  pm.randomize(net, seed)
  save(str(tmp_path))
  x, sigma = _inputs(kind, h, seed)
  ref = pm.reference_outputs(kind, net, x, sigma, h["vocab"], tc)
  imp, logits = _ours(str(tmp_path), kind, x, sigma)
  v, xn = h["vocab"], x.numpy()
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  masked = xn == v
  if kind == "mdlm":
    np.testing.assert_allclose(logits, ref["raw"][..., :v], atol=ATOL, rtol=0)
    np.testing.assert_allclose(lp[masked], ref["peer"][..., :v][masked], atol=ATOL)
  elif kind == "sedd":
    gap = (lp - ref["peer"][..., :v] - np.log(np.expm1(sigma.numpy()))[:, None, None])
    gap = gap[masked]
    np.testing.assert_allclose(gap - gap.mean(-1, keepdims=True), 0.0, atol=ATOL)
  else:
    np.testing.assert_allclose(logits, ref["raw"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(lp, ref["peer"], atol=ATOL)


def test_sedd_score_function_gives_the_denoiser(tmp_path):
  """SEDD's own ``get_score_fn(sampling=True)`` (the ratios it samples with): at a
  masked position ``score (e^sigma - 1)``, normalized over the clean tokens, is the
  project's denoiser."""
  _need("sedd")
  h = pm.tiny_hparams()
  net, save = pm.build("sedd", h)
  pm.randomize(net, 5)
  save(str(tmp_path))
  x, sigma = _inputs("sedd", h, 5)
  utils = pm._load("peer_sedd_model.utils",  # pylint: disable=protected-access
                   os.path.join(pm.repo_dir("sedd"), "model", "utils.py"))
  with torch.no_grad():
    score = utils.get_score_fn(net, train=False, sampling=True)(x, sigma).numpy()
  _, logits = _ours(str(tmp_path), "sedd", x, sigma)
  v, masked = h["vocab"], x.numpy() == h["vocab"]
  den = score[..., :v] * np.expm1(sigma.numpy())[:, None, None]
  den = den / den.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits, -1))[masked], den[masked],
                             atol=1e-5)


def test_torch_save_and_bf16_checkpoints_read_the_same(tmp_path):
  """The same weights as a ``torch.save`` ``pytorch_model.bin`` (read without torch)
  and as bf16 safetensors (read as their float32 values) give the same parameters."""
  _need("mdlm")
  import safetensors.torch
  h = pm.tiny_hparams()
  net, save = pm.build("mdlm", h, time_conditioning=False)
  pm.randomize(net, 7)
  save(str(tmp_path / "st"))
  a = peers.read("mdlm", str(tmp_path / "st"))
  binary = tmp_path / "bin"
  binary.mkdir()
  os.replace(tmp_path / "st" / "config.json", binary / "config.json")
  torch.save({f"backbone.{k}": v for k, v in net.state_dict().items()},
             binary / "pytorch_model.bin")
  b = peers.read("mdlm", str(binary))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  bf = tmp_path / "bf16"
  bf.mkdir()
  (bf / "config.json").write_text((binary / "config.json").read_text())
  state = {f"backbone.{k}": v.to(torch.bfloat16).contiguous()
           for k, v in net.state_dict().items()}
  safetensors.torch.save_file(state, str(bf / "model.safetensors"))
  c = peers.read("mdlm", str(bf))
  assert c.weights_dtype == "bfloat16"
  want = {k: v.float().numpy() for k, v in state.items()}
  np.testing.assert_array_equal(c.params["vocab_embed"],
                                want["backbone.vocab_embed.embedding"])


def test_converted_workdir_gives_the_peers_logits(tmp_path):
  """Through ``experiments.convert``'s code path: the restored run's denoiser is the
  peer module's (MDLM, SUBS) on fresh random weights."""
  _need("mdlm")
  from tcsm_jax.training import restore
  h = pm.tiny_hparams()
  net, save = pm.build("mdlm", h, time_conditioning=False)
  pm.randomize(net, 11)
  save(str(tmp_path / "peer"))
  imports.convert("mdlm", str(tmp_path / "peer"), str(tmp_path / "w"),
                  make_tokenizer(str(tmp_path / "tok.json"), h["vocab"]))
  run = restore.load_run(str(tmp_path / "w"))
  x, sigma = _inputs("mdlm", h, 11)
  ref = pm.reference_outputs("mdlm", net, x, sigma, h["vocab"], False)
  logits = np.asarray(run.experiment.apply_fn(run.params, jnp.asarray(x.numpy()),
                                              jnp.asarray(sigma.numpy())))
  np.testing.assert_allclose(logits, ref["raw"][..., :h["vocab"]], atol=ATOL, rtol=0)

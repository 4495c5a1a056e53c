"""GPT-2 in Flax, read from a Hugging Face directory without torch.

``hf:DIR`` names a local directory in Hugging Face layout, as ``save_pretrained`` or
``huggingface-cli download gpt2-large`` leaves it:

* ``config.json``: ``n_layer``, ``n_embd``, ``n_head``, ``n_positions``,
  ``layer_norm_epsilon``, ``vocab_size``, ``activation_function`` (``gelu_new``,
  GPT-2's tanh GELU, or ``gelu``), ``pad_token_id`` and ``num_labels`` for a classifier;
* ``model.safetensors``: read with the ``safetensors`` package into NumPy. Keys with or
  without the ``transformer.`` prefix (``GPT2LMHeadModel`` / ``GPT2Model``); no
  ``lm_head`` (tied to ``wte``); ``score.weight [num_labels, n_embd]`` for a
  ``GPT2ForSequenceClassification``;
* ``tokenizer.json``: the tokenizer (``tcsm_jax.data.tokenizer.HuggingFace``).

The network: learned positions, pre-LayerNorm blocks, GELU-tanh MLP, causal attention
scaled by ``1/sqrt(head_dim)``, final LayerNorm, logits from the tied embedding
(``GPT2LM``) or the last non-pad token's ``score`` projection (``GPT2Classifier``).
Parameters are float32 in HF's names (``wte``, ``wpe``, ``h_<i>/{ln_1, attn/c_attn,
attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj}``, ``ln_f``, ``score``); HF's ``Conv1D``
weights are ``[in, out]``, which is Flax's ``Dense`` kernel layout, so they load
unchanged. ``dtype`` (``float32`` or ``bfloat16``) is the compute dtype; in float32 every
matmul runs at ``Precision.HIGHEST`` (TPUs would otherwise run one bf16 pass).
Sharding: ``training.partition.state_shardings`` shards any parameter tree by shape
(FSDP over the largest divisible dimension), this one included.

A hub id (``hf:gpt2-large``, anything that is not a local directory) is resolved with
``huggingface_hub.snapshot_download``, imported only then, and only the files above are
fetched; nothing else in the project downloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import errors, targets
from tcsm_jax.data import tokenizer as tokenizer_lib
from tcsm_jax.models.transformer import attention

ACTIVATIONS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}
FILES = ("config.json", "model.safetensors", "tokenizer.json")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class PretrainedError(errors.UserError, ValueError):
  """A pre-trained model directory that cannot be used: missing, corrupt, incomplete."""


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """GPT-2 hyper-parameters (``config.json``'s names)."""

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: Optional[int] = None
  layer_norm_epsilon: float = 1e-5
  activation_function: str = "gelu_new"
  num_labels: int = 0              # > 0: a sequence classifier (``score`` head)
  pad_token_id: Optional[int] = None
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  dtype: Any = jnp.float32

  @property
  def inner(self) -> int:
    return self.n_inner or 4 * self.n_embd


def config_from_dict(d: Dict[str, Any], where: str = "config.json",
                     dtype: str = "float32") -> GPT2Config:
  """A ``GPT2Config`` from a ``config.json`` dict; one-line errors for what cannot run."""
  if dtype not in _DTYPES:
    raise errors.FlagError(f"GPT-2 dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  model_type = d.get("model_type", "gpt2")
  if model_type != "gpt2":
    raise PretrainedError(f"{where}: model_type {model_type!r} is not 'gpt2'")
  for key in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
    if not isinstance(d.get(key), int) or d[key] < 1:
      raise PretrainedError(f"{where}: key {key!r} missing or not a positive integer")
  if d["n_embd"] % d["n_head"]:
    raise PretrainedError(f"{where}: n_embd {d['n_embd']} is not divisible by n_head "
                          f"{d['n_head']}")
  act = d.get("activation_function", "gelu_new")
  if act not in ACTIVATIONS:
    raise PretrainedError(f"{where}: activation_function {act!r} is not supported "
                          f"(one of {sorted(ACTIVATIONS)})")
  for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
               "add_cross_attention"):
    if d.get(flag):
      raise PretrainedError(f"{where}: {flag}=true is not supported")
  if d.get("scale_attn_weights") is False:
    raise PretrainedError(f"{where}: scale_attn_weights=false is not supported")
  archs = d.get("architectures") or []
  is_cls = any("SequenceClassification" in a for a in archs)
  num_labels = 0
  if is_cls:
    num_labels = int(d.get("num_labels") or len(d.get("id2label") or {}) or 2)
  return GPT2Config(
      vocab_size=d["vocab_size"], n_positions=d["n_positions"], n_embd=d["n_embd"],
      n_layer=d["n_layer"], n_head=d["n_head"], n_inner=d.get("n_inner"),
      layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
      activation_function=act, num_labels=num_labels,
      pad_token_id=d.get("pad_token_id"), bos_token_id=d.get("bos_token_id"),
      eos_token_id=d.get("eos_token_id"), dtype=_DTYPES[dtype])


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _dense(cfg: GPT2Config, n: int, name: str) -> nn.Dense:
  return nn.Dense(n, dtype=cfg.dtype, precision=_precision(cfg.dtype), name=name)


class _Attention(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, y):
    b, t, d = y.shape
    h = self.cfg.n_head
    qkv = _dense(self.cfg, 3 * d, "c_attn")(y).reshape(b, t, 3, h, d // h)
    att = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True,
                    impl="einsum")                       # scaled by 1/sqrt(head_dim)
    return _dense(self.cfg, d, "c_proj")(att.reshape(b, t, d))


class _Mlp(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, y):
    cfg = self.cfg
    y = _dense(cfg, cfg.inner, "c_fc")(y)
    y = jax.nn.gelu(y, approximate=ACTIVATIONS[cfg.activation_function])
    return _dense(cfg, cfg.n_embd, "c_proj")(y)


class _Block(nn.Module):
  cfg: GPT2Config

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    ln = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                                   name=name)
    x = x + _Attention(cfg, name="attn")(ln("ln_1")(x))
    return x + _Mlp(cfg, name="mlp")(ln("ln_2")(x))


class GPT2Trunk(nn.Module):
  """``tokens [b, T] -> hidden [b, T, n_embd]`` after ``ln_f``."""

  cfg: GPT2Config

  @nn.compact
  def __call__(self, tokens, soft_tokens=None):
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    t = tokens.shape[1]
    if t > cfg.n_positions:
      raise ValueError(f"sequence length {t} exceeds GPT-2's n_positions "
                       f"{cfg.n_positions}")
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, name="wte")
    wpe = nn.Embed(cfg.n_positions, cfg.n_embd, name="wpe")
    if soft_tokens is not None:
      # [b, T, V] weights (one-hot: the same output, differentiable in the input).
      x = jnp.einsum("btv,vd->btd", soft_tokens.astype(jnp.float32), wte.embedding,
                     precision=jax.lax.Precision.HIGHEST)
    else:
      x = wte(tokens)
    x = (x + wpe.embedding[:t][None]).astype(cfg.dtype)
    for i in range(cfg.n_layer):
      x = _Block(cfg, name=f"h_{i}")(x)
    return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, name="ln_f")(x)


class GPT2LM(nn.Module):
  """``GPT2LMHeadModel``: ``tokens [b, T] -> next-token logits [b, T, vocab_size]``
  (``logits[:, i]`` predicts token ``i + 1``; no BOS is added)."""

  cfg: GPT2Config

  @nn.compact
  def __call__(self, tokens, soft_tokens=None):
    y = GPT2Trunk(self.cfg, name="transformer")(tokens, soft_tokens)
    emb = self.variables["params"]["transformer"]["wte"]["embedding"]
    return jnp.einsum("btd,vd->btv", y, emb.astype(self.cfg.dtype),
                      precision=_precision(self.cfg.dtype))


class GPT2Classifier(nn.Module):
  """``GPT2ForSequenceClassification``: ``tokens [b, T] -> logits [b, num_labels]`` at
  the rightmost token that is not ``pad_token_id`` (the last token without one)."""

  cfg: GPT2Config

  @nn.compact
  def __call__(self, tokens, soft_tokens=None):
    cfg = self.cfg
    y = GPT2Trunk(cfg, name="transformer")(tokens, soft_tokens)
    logits = nn.Dense(cfg.num_labels, use_bias=False, dtype=cfg.dtype,
                      precision=_precision(cfg.dtype), name="score")(y)    # [b, T, C]
    if cfg.pad_token_id is None:
      last = jnp.full(tokens.shape[:1], tokens.shape[1] - 1)
    else:
      idx = jnp.arange(tokens.shape[1])[None]
      last = jnp.argmax(idx * (tokens != cfg.pad_token_id), -1)
    return jnp.take_along_axis(logits, last[:, None, None], 1)[:, 0]


# ---- Hugging Face directory -> (config, params) -------------------------------------
def resolve(spec: str, what: str = "GPT-2") -> str:
  """A local directory for ``spec`` (``hf:DIR``, ``DIR`` or a hub id such as
  ``hf:gpt2-large``, the last fetched with ``huggingface_hub`` on demand).

  A path that starts with ``.``, ``/`` or ``~``, has more than one ``/``, or whose
  parent directory exists here is local: when missing it is an error, never a hub
  lookup."""
  path = spec[3:] if spec.startswith("hf:") else spec
  if not path:
    raise PretrainedError(f"{what} spec {spec!r} names no directory (hf:DIR)")
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise PretrainedError(f"{what} {path!r} is a file, not a Hugging Face directory")
  parent = os.path.dirname(path.rstrip("/"))
  looks_local = (path.startswith((".", "/", "~")) or path.count("/") > 1
                 or bool(parent) and os.path.isdir(parent))
  if looks_local:
    raise PretrainedError(f"{what} directory {path!r} does not exist")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise PretrainedError(f"{what} {path!r} is not a local directory, and fetching it as "
                          "a hub id needs huggingface_hub (pip install huggingface_hub)"
                          ) from None
  try:
    return huggingface_hub.snapshot_download(path, allow_patterns=list(FILES))
  except Exception as e:  # pylint: disable=broad-except  (network, unknown repo, auth)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PretrainedError(f"{what} {path!r} is not a local directory and could not be "
                          f"fetched from the hub ({type(e).__name__}: {msg})") from None


def _read_config(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise PretrainedError(f"{path!r} does not exist (a Hugging Face directory holds "
                          "config.json, model.safetensors, tokenizer.json)")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainedError(f"{path!r} is not a readable JSON file ({e})") from None
  if not isinstance(d, dict):
    raise PretrainedError(f"{path!r} does not hold a JSON object")
  return d


def _read_tensors(directory: str) -> Dict[str, np.ndarray]:
  path = os.path.join(directory, "model.safetensors")
  if not os.path.isfile(path):
    raise PretrainedError(f"{path!r} does not exist (only safetensors weights are read; "
                          "pytorch_model.bin needs torch)")
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(path)
  except Exception as e:  # pylint: disable=broad-except  (safetensors raises several)
    raise PretrainedError(f"{path!r} is not a readable safetensors file "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from None


def params_from_tensors(tensors: Dict[str, np.ndarray], cfg: GPT2Config,
                        where: str = "model.safetensors") -> Dict[str, Any]:
  """Flax parameters (float32) from HF tensors (with or without ``transformer.``)."""
  def get(name, shape):
    for key in (f"transformer.{name}", name):
      if key in tensors:
        arr = tensors[key]
        if tuple(arr.shape) != tuple(shape):
          raise PretrainedError(f"{where}: tensor {key!r} has shape {tuple(arr.shape)}, "
                                f"config.json implies {tuple(shape)}")
        return np.asarray(arr, np.float32)
    raise PretrainedError(f"{where}: missing tensor {name!r} (nor 'transformer.{name}')")

  d, inner = cfg.n_embd, cfg.inner
  ln = lambda n: {"scale": get(f"{n}.weight", (d,)), "bias": get(f"{n}.bias", (d,))}
  dense = lambda n, i, o: {"kernel": get(f"{n}.weight", (i, o)), "bias": get(f"{n}.bias",
                                                                            (o,))}
  trunk = {"wte": {"embedding": get("wte.weight", (cfg.vocab_size, d))},
           "wpe": {"embedding": get("wpe.weight", (cfg.n_positions, d))},
           "ln_f": ln("ln_f")}
  for i in range(cfg.n_layer):
    p = f"h.{i}"
    trunk[f"h_{i}"] = {
        "ln_1": ln(f"{p}.ln_1"), "ln_2": ln(f"{p}.ln_2"),
        "attn": {"c_attn": dense(f"{p}.attn.c_attn", d, 3 * d),
                 "c_proj": dense(f"{p}.attn.c_proj", d, d)},
        "mlp": {"c_fc": dense(f"{p}.mlp.c_fc", d, inner),
                "c_proj": dense(f"{p}.mlp.c_proj", inner, d)}}
  params = {"transformer": trunk}
  if cfg.num_labels:
    if "score.weight" not in tensors:
      raise PretrainedError(f"{where}: config.json names a sequence classifier but there "
                            "is no 'score.weight'")
    w = tensors["score.weight"]
    if tuple(w.shape) != (cfg.num_labels, d):
      raise PretrainedError(f"{where}: 'score.weight' has shape {tuple(w.shape)}, "
                            f"expected {(cfg.num_labels, d)}")
    params["score"] = {"kernel": np.asarray(w, np.float32).T}
  return params


@dataclasses.dataclass
class Pretrained:
  """A GPT-2 read from ``directory``: the module (``GPT2LM`` or ``GPT2Classifier``), its
  float32 parameters, its config and its tokenizer (None if no ``tokenizer.json``)."""

  directory: str
  config: GPT2Config
  model: nn.Module
  params: Dict[str, Any]
  tokenizer: Optional[tokenizer_lib.Tokenizer]

  @property
  def bos_id(self) -> int:
    """GPT-2's BOS: ``<|endoftext|>`` (``bos_token_id``, else the tokenizer's EOS)."""
    for v in (self.config.bos_token_id, self.config.eos_token_id,
              self.tokenizer.eos_id if self.tokenizer is not None else None):
      if v is not None:
        return int(v)
    return self.config.vocab_size - 1

  @property
  def eos_id(self) -> int:
    for v in (self.tokenizer.eos_id if self.tokenizer is not None else None,
              self.config.eos_token_id):
      if v is not None:
        return int(v)
    return self.bos_id


def load(spec: str, dtype: str = "float32", classifier: Optional[bool] = None,
         need_tokenizer: bool = True, what: str = "GPT-2") -> Pretrained:
  """Reads a Hugging Face GPT-2 directory (``hf:DIR``; a hub id is fetched on demand).

  Args:
    spec: ``hf:DIR``, ``DIR`` or a hub id.
    dtype: compute dtype, ``float32`` or ``bfloat16`` (parameters stay float32).
    classifier: require a sequence classifier (True) or a language model (False).
    need_tokenizer: a missing ``tokenizer.json`` is an error (else ``tokenizer=None``).
  Raises:
    PretrainedError: missing or corrupt file, missing tensor, wrong shapes (one line).
  """
  directory = resolve(spec, what)
  cfg = config_from_dict(_read_config(directory), os.path.join(directory, "config.json"),
                         dtype)
  if classifier is True and not cfg.num_labels:
    raise PretrainedError(f"{what} {directory!r} is not a GPT2ForSequenceClassification "
                          "(config.json architectures)")
  if classifier is False and cfg.num_labels:
    raise PretrainedError(f"{what} {directory!r} is a sequence classifier, not a "
                          "language model")
  params = params_from_tensors(_read_tensors(directory), cfg,
                               os.path.join(directory, "model.safetensors"))
  tok_path = os.path.join(directory, "tokenizer.json")
  tok = None
  if os.path.isfile(tok_path):
    tok = tokenizer_lib.HuggingFace.from_file(tok_path)
    if tok.vocab_size > cfg.vocab_size:
      raise PretrainedError(f"{tok_path!r} has {tok.vocab_size} tokens, more than the "
                            f"model's vocab_size {cfg.vocab_size}")
  elif need_tokenizer:
    raise PretrainedError(f"{tok_path!r} does not exist (the model's tokenizer is needed "
                          "to read and write text)")
  model = GPT2Classifier(cfg) if cfg.num_labels else GPT2LM(cfg)
  return Pretrained(directory, cfg, model, jax.tree.map(jnp.asarray, params), tok)


def log_probs(model: GPT2LM, params, tokens):
  """``[b, T, V]`` float32 ``log p(x_{t+1} = . | x_{<=t})`` (no BOS added)."""
  return jax.nn.log_softmax(model.apply({"params": params}, tokens).astype(jnp.float32),
                            -1)


def sequence_log_prob(model: GPT2LM, params, tokens, bos: int):
  """``[b]`` ``log p(tokens)`` with ``bos`` prepended (every token scored)."""
  inp = jnp.concatenate([jnp.full(tokens.shape[:1] + (1,), bos, tokens.dtype),
                         tokens[:, :-1]], 1)
  lp = log_probs(model, params, inp)
  return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0].sum(-1)


def init_params(cfg: GPT2Config, seed: int = 0, scale: float = 0.02):
  """Random parameters (tests): every weight and bias N(0, scale), LayerNorm scales
  1 + N(0, scale) (non-zero biases make the tests see every term)."""
  model = GPT2Classifier(cfg) if cfg.num_labels else GPT2LM(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 2), jnp.int32)))["params"]
  leaves, tree = jax.tree.flatten_with_path(shapes)
  rng = np.random.default_rng(seed)                 # NumPy: no compile per leaf shape
  out = []
  for path, leaf in leaves:
    w = scale * rng.standard_normal(leaf.shape).astype(np.float32)
    out.append(jnp.asarray(w + 1.0 if str(path[-1].key) == "scale" else w))
  return jax.tree.unflatten(tree, out)


def tiny_config(vocab_size: int = 16, n_positions: int = 16, n_embd: int = 32,
                n_layer: int = 2, n_head: int = 2, **kw) -> GPT2Config:
  """A small GPT-2 for tests."""
  return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                    n_layer=n_layer, n_head=n_head, **kw)


def causal_lm(pt: Pretrained):
  """The AR-teacher adapter (``targets.CausalLM``) of a loaded GPT-2 language model:
  BOS = ``<|endoftext|>`` (``Pretrained.bos_id``), inputs = its ``vocab_size`` rows."""
  if pt.config.num_labels:
    raise PretrainedError(f"{pt.directory!r} is a sequence classifier, not a language "
                          "model")
  model = pt.model
  return targets.CausalLM(
      logits_fn=lambda p, t: model.apply({"params": p}, t),
      soft_logits_fn=lambda p, s: model.apply(
          {"params": p}, jnp.zeros(s.shape[:2], jnp.int32), soft_tokens=s),
      vocab_size=pt.config.vocab_size, bos_id=pt.bos_id, num_inputs=pt.config.vocab_size)


def fingerprint(directory: str) -> str:
  """16 hex digits of ``model.safetensors``'s sha256 (the pin of a borrowed GPT-2)."""
  h = hashlib.sha256()
  with open(os.path.join(directory, "model.safetensors"), "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()[:16]


def save(directory: str, cfg: GPT2Config, params, tokenizer_json: Optional[str] = None,
         prefix: str = "transformer.") -> None:
  """Writes ``params`` in the Hugging Face layout ``load`` reads (``config.json``,
  ``model.safetensors`` with HF's names, optionally ``tokenizer.json``): tests and
  fixtures without torch."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  tr = jax.tree.map(np.asarray, params["transformer"])
  out = {f"{prefix}wte.weight": tr["wte"]["embedding"],
         f"{prefix}wpe.weight": tr["wpe"]["embedding"],
         f"{prefix}ln_f.weight": tr["ln_f"]["scale"], f"{prefix}ln_f.bias": tr["ln_f"]["bias"]}
  for i in range(cfg.n_layer):
    h, p = tr[f"h_{i}"], f"{prefix}h.{i}."
    for ln in ("ln_1", "ln_2"):
      out[f"{p}{ln}.weight"], out[f"{p}{ln}.bias"] = h[ln]["scale"], h[ln]["bias"]
    for sub, names in (("attn", ("c_attn", "c_proj")), ("mlp", ("c_fc", "c_proj"))):
      for n in names:
        out[f"{p}{sub}.{n}.weight"] = h[sub][n]["kernel"]
        out[f"{p}{sub}.{n}.bias"] = h[sub][n]["bias"]
  d = {"model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions,
       "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
       "n_inner": cfg.n_inner, "layer_norm_epsilon": cfg.layer_norm_epsilon,
       "activation_function": cfg.activation_function,
       "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
       "pad_token_id": cfg.pad_token_id,
       "architectures": ["GPT2LMHeadModel"]}
  if cfg.num_labels:
    out["score.weight"] = np.asarray(params["score"]["kernel"]).T
    d.update(architectures=["GPT2ForSequenceClassification"], num_labels=cfg.num_labels)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in out.items()},
            os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(d, f, indent=2)
  if tokenizer_json is not None:
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(tokenizer_json)


def same_tokenizer(tok, data_tokenizer, data_sha: Optional[str]) -> Optional[bool]:
  """Whether a GPT-2's tokenizer (``tok``) and the data's are the same: equal file
  sha256, or, for two Hugging Face tokenizers, equal vocabularies (two JSON files of one
  vocabulary may differ in bytes). None when it cannot be told (one side unknown)."""
  tsha = getattr(tok, "sha256", None)
  if tsha is None or (data_sha is None and data_tokenizer is None):
    return None
  if data_sha is not None and tsha == data_sha:
    return True
  a, b = getattr(tok, "tok", None), getattr(data_tokenizer, "tok", None)
  if a is not None and b is not None:
    return a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True)
  return False

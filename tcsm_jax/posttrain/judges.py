"""Judges of generative perplexity from a spec: a project workdir or ``hf:DIR``.

``load_judge(spec)`` returns a ``gen_ppl.Judge`` (the one interface every binary uses):

* a training workdir holding a causal model (``model.arch = causal``): its own data's
  tokenizer, context ``data.seq_len``, BOS = its BOS row (``vocab_size``); default
  convention ``project`` (the number ``quality.report`` always gave);
* ``hf:DIR`` (or a hub id, fetched only then): a Hugging Face GPT-2
  (``models/gpt2.py``) with its ``tokenizer.json``, context ``n_positions``,
  BOS = EOS = ``<|endoftext|>``; default convention ``mdlm``.
"""

from __future__ import annotations

from tcsm_jax import errors, gen_ppl
from tcsm_jax.models import gpt2
from tcsm_jax.training import restore


def is_hf(spec: str) -> bool:
  return spec.startswith("hf:")


def from_pretrained(pt: gpt2.Pretrained, name: str, batch_size: int = 8) -> gen_ppl.Judge:
  """A judge from a loaded Hugging Face GPT-2."""
  model, params = pt.model, pt.params
  nll = gen_ppl.batched_nll(lambda x: model.apply({"params": params}, x), batch_size,
                            max_len=pt.config.n_positions)
  return gen_ppl.Judge(name=name, nll=nll, context=pt.config.n_positions,
                       vocab_size=pt.config.vocab_size, bos_id=pt.bos_id,
                       eos_id=pt.eos_id, tokenizer=pt.tokenizer,
                       default_convention="mdlm", kind="hf",
                       info={"directory": pt.directory})


def from_run(run, name: str, batch_size: int = 64) -> gen_ppl.Judge:
  """A judge from a loaded project run (``restore.load_run``) of a causal model."""
  exp = run.experiment
  if not exp.causal:
    raise errors.WorkdirError(f"judge {name!r} holds a diffusion model; a judge is a "
                              "causal model (model.arch=causal) or hf:DIR")
  model, params = exp.model, run.params
  v = exp.dataset.vocab_size
  ctx = int(exp.config.data.seq_len)
  nll = gen_ppl.batched_nll(lambda x: model.apply({"params": params}, x), batch_size,
                            max_len=ctx)
  return gen_ppl.Judge(name=name, nll=nll, context=ctx, vocab_size=v, bos_id=v,
                       eos_id=getattr(exp.dataset, "eos_id", None),
                       tokenizer=getattr(exp.dataset, "tokenizer", None),
                       default_convention="project", kind="workdir",
                       info={"step": int(run.step)})


def load_judge(spec: str, dtype: str = "float32", batch_size: int = 8) -> gen_ppl.Judge:
  """The judge ``spec`` names: a workdir, or ``hf:DIR`` / a hub id."""
  if is_hf(spec):
    pt = gpt2.load(spec, dtype=dtype, classifier=False, what="judge")
    return from_pretrained(pt, spec, batch_size)
  return from_run(restore.load_run(spec), spec)

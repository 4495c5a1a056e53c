"""The generative-perplexity conventions against each peer's formula run with torch and
transformers on the same random GPT-2 (the committed fixture) and the same texts.
Needs the `parity` extra; skipped without it.

The peer lines re-expressed here (kuleshov-group/mdlm diffusion.py
compute_generative_perplexity, used unchanged by kuleshov-group/remdm and, with its own
NLL.update, s-sahoo/duo metrics.py; louaaron/Score-Entropy-Discrete-Diffusion
run_train.py) are the arithmetic only: HF tokenizer call, torch.split into context
chunks, F.cross_entropy, the first-EOS mask, the weighted sums."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the parity extra (torch)")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need the parity extra (transformers)")
F = torch.nn.functional

from tcsm_jax.models import gpt2  # noqa: E402
from tcsm_jax.posttrain import judges  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_tiny")


@pytest.fixture(scope="module")
def setup():
  pt = gpt2.load(f"hf:{FIX}")
  judge = judges.from_pretrained(pt, "hf:tiny", batch_size=4)
  model = transformers.GPT2LMHeadModel.from_pretrained(FIX).eval()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{FIX}/tokenizer.json",
                                             eos_token="<|endoftext|>")
  tok.pad_token = tok.eos_token                       # as MDLM/DUO/ReMDM do for GPT-2
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 300, size=(10, 20))
  ids[1, 5] = pt.eos_id
  ids[2, 12:] = pt.eos_id
  return pt, judge, model, tok, ids


def _mdlm_torch(model, tok, texts, max_length, ctx, batch_size, state):
  enc = tok(texts, return_tensors="pt", return_token_type_ids=False,
            return_attention_mask=True, truncation=True, padding=True,
            max_length=max_length)
  samples, attn = enc["input_ids"], enc["attention_mask"]
  bs = min(batch_size, samples.shape[0])
  for i in range(samples.shape[0] // bs):
    for chunk, mask in zip(torch.split(samples[i * bs:(i + 1) * bs], ctx, dim=-1),
                           torch.split(attn[i * bs:(i + 1) * bs], ctx, dim=-1)):
      with torch.no_grad():
        logits = model(chunk, attention_mask=mask)[0].transpose(-1, -2)
      nlls = F.cross_entropy(logits[..., :-1], chunk[..., 1:], reduction="none")
      first_eos = (chunk == tok.eos_token_id).cumsum(-1) == 1
      token_mask = chunk != tok.eos_token_id
      weight = (first_eos[..., 1:] + token_mask[..., 1:]).to(torch.float64)
      state[0] += float((nlls.double() * weight).sum())
      state[1] += float(weight.sum())


@pytest.mark.parametrize("conv,group,bs", [("mdlm", 4, 3), ("duo", 5, 2), ("remdm", 0, 1)])
def test_mdlm_family_equals_peer_torch(setup, conv, group, bs):
  pt, judge, model, tok, ids = setup
  texts = pt.tokenizer.decode(ids)
  max_length = 40                                    # two chunks of 32
  state = [0.0, 0.0]
  groups = [texts] if not group else [texts[i:i + group] for i in range(0, 10, group)]
  for g in groups:
    _mdlm_torch(model, tok, g, max_length, 32, bs, state)
  want = float(np.exp(state[0] / state[1]))
  out = judge.score(ids, decode=pt.tokenizer.decode, convention=conv, group_size=group,
                    max_length=max_length, ppl_batch_size=bs)
  assert out["gen_ppl_tokens"] == int(state[1])
  assert out["gen_perplexity"] == pytest.approx(want, rel=1e-4)


def test_sedd_equals_peer_torch(setup):
  pt, judge, model, _, ids = setup
  sample = torch.as_tensor(ids[:, :16])
  bs = 4
  total = 0.0
  batches = sample.shape[0] // bs
  for i in range(batches):
    s = sample[i * bs:(i + 1) * bs]
    with torch.no_grad():
      _, logits = model(s, labels=s)[:2]
    logits = logits.transpose(-1, -2)
    total += float(F.cross_entropy(logits[..., :-1], s[..., 1:], reduction="none")
                   .mean(dim=-1).exp().mean())
  want = total / batches
  out = judge.score(ids[:, :16], convention="sedd",
                    model_tokenizer_sha=pt.tokenizer.sha256, ppl_batch_size=bs)
  assert out["gen_perplexity"] == pytest.approx(want, rel=1e-4)


def test_torch_bool_mask_sum_is_logical_or():
  a = torch.tensor([True, False, True])
  b = torch.tensor([True, True, False])
  assert (a + b).dtype == torch.bool and (a + b).tolist() == [True, True, True]

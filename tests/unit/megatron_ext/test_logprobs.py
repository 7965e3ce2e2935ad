"""token_logprobs on one rank (full vocabulary) vs a float64 log_softmax reference; TP=2 is in tests/integration."""

from __future__ import annotations

import pytest
import torch

from megatron_ext.logprobs import token_logprobs


def reference(logits: torch.Tensor, ids: torch.Tensor, temperature: float, vocab: int):
    logp = torch.log_softmax(logits[..., :vocab].double() / temperature, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), entropy


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("padded", [False, True])
def test_values_match_float64(temperature, padded):
    g = torch.Generator().manual_seed(0)
    vocab = 131
    width = 256 if padded else vocab
    logits = 4 * torch.randn(3, 7, width, generator=g)
    if padded:  # padding columns hold garbage that must not count
        logits[..., vocab:] = 50.0
    ids = torch.randint(0, vocab, (3, 7), generator=g)
    lp, ent = token_logprobs(logits, ids, temperature=temperature, with_entropy=True, vocab_size=vocab)
    ref_lp, ref_ent = reference(logits, ids, temperature, vocab)
    assert lp.dtype == torch.float32 and lp.shape == (3, 7)
    torch.testing.assert_close(lp.double(), ref_lp, atol=2e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=2e-5, rtol=0)
    assert torch.equal(token_logprobs(logits, ids, temperature=temperature, vocab_size=vocab), lp)


def test_bf16_logits_are_computed_in_fp32():
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(2, 5, 64, generator=g)).bfloat16()
    ids = torch.randint(0, 64, (2, 5), generator=g)
    lp = token_logprobs(logits, ids)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), reference(logits.float(), ids, 1.0, 64)[0], atol=1e-5, rtol=0)


def test_gradient_matches_float64_autograd():
    g = torch.Generator().manual_seed(2)
    vocab, width, temp = 50, 64, 0.8
    base = 2 * torch.randn(2, 4, width, generator=g, dtype=torch.float64)
    ids = torch.randint(0, vocab, (2, 4), generator=g)
    w1, w2 = (
        torch.randn(2, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 4, generator=g, dtype=torch.float64),
    )
    ref_in = base.clone().requires_grad_(True)
    ref_lp, ref_ent = reference(ref_in, ids, temp, vocab)
    ((ref_lp * w1).sum() + (ref_ent * w2).sum()).backward()
    x = base.float().requires_grad_(True)
    lp, ent = token_logprobs(x, ids, temperature=temp, with_entropy=True, vocab_size=vocab)
    ((lp * w1.float()).sum() + (ent * w2.float()).sum()).backward()
    torch.testing.assert_close(x.grad.double(), ref_in.grad, atol=1e-5, rtol=0)
    assert float(x.grad[..., vocab:].abs().max()) == 0.0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="target_ids"):
        token_logprobs(torch.zeros(2, 3, 8), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)

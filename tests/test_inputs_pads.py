"""Token lists from outside: OpenAI's files right-pad queries with PAD_ID (50259) and pad
responses after truncation. A list holding pads anywhere gives exactly what the same list without
them gives, in every stage, on both attention paths.

"Exactly": torch.equal where the batch has the same shape as the reference (the reference is the
lists without pads, left-padded to the same width); allclose at 1e-6 (absolute and relative)
where the shape differs.
"""

import dataclasses
import random

import pytest
import torch

import gpt2
from gpt2 import GPT2, PAD_ID, generate, left_pad, response_logprobs

V = 50257
CONFIG = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, use_kernels="off")


def make_model(use_kernels="off"):
    torch.manual_seed(0)
    model = GPT2(dataclasses.replace(CONFIG, use_kernels=use_kernels)).eval()
    with torch.no_grad():
        for block in model.transformer.h:  # sharp attention: a leaked pad would show
            block.attn.c_attn.weight.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


def random_lists(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def with_pads(seq, k, rng):
    """seq with k PAD_IDs inserted at random places (the ends included)."""
    out = list(seq)
    for _ in range(k):
        out.insert(rng.randrange(len(out) + 1), PAD_ID)
    return out


def right_pad(seqs, width):
    """OpenAI's layout: PAD_ID on the right up to width."""
    return torch.tensor([s + [PAD_ID] * (width - len(s)) for s in seqs])


def left_pad_to(seqs, width):
    """The reference: the lists without pads, left-padded to the given width."""
    tokens, mask = left_pad(seqs)
    extra = width - tokens.size(1)
    tokens = torch.cat([torch.full((len(seqs), extra), PAD_ID), tokens], 1)
    return tokens, torch.cat([torch.zeros(len(seqs), extra, dtype=torch.bool), mask], 1)


def padded_batch(seed=0, lengths=(7, 3, 12, 1), k=(2, 4, 0, 3)):
    """(clean lists, the same lists with pads inserted and right-padded, as a (B, W) tensor)."""
    rng = random.Random(seed)
    clean = random_lists(seed, lengths)
    dirty = [with_pads(s, n, rng) for s, n in zip(clean, k)]
    W = max(len(s) for s in dirty) + 2
    return clean, right_pad(dirty, W)


def test_left_pad_drops_pad_ids():
    clean, dirty = padded_batch()
    a = left_pad([row.tolist() for row in dirty])
    b = left_pad(clean)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("mask_kind", ["none", "pad-ids", "mask-only"])
def test_hidden_states_pads_anywhere(model, mask_kind):
    """Pads marked by PAD_ID alone (mask None), by both, or by the mask alone (any token id
    under a 0): real positions get exactly the reference's outputs; a pad after a real token gets
    the output of the last real token before it (as lm-human-preferences)."""
    clean, dirty = padded_batch()
    is_pad = dirty == PAD_ID
    mask = {"none": None, "pad-ids": ~is_pad, "mask-only": ~is_pad}[mask_kind]
    tokens = dirty.masked_fill(is_pad, 11) if mask_kind == "mask-only" else dirty
    with torch.no_grad():
        ours = model.hidden_states(tokens, mask)  # (B, W, C)
        ref = model.hidden_states(*left_pad_to(clean, dirty.size(1)))
    for b, seq in enumerate(clean):
        real = ~is_pad[b]
        assert torch.equal(ours[b, real], ref[b, dirty.size(1) - len(seq) :])
        last = None
        for j in range(dirty.size(1)):
            if real[j]:
                last = j
            elif last is not None:
                assert torch.equal(ours[b, j], ours[b, last])
    # the last n positions only (the final block runs there): the same outputs, pads included,
    # and the same gradients
    for n in (1, 3, 9):
        with torch.no_grad():
            some = model.hidden_states(tokens, mask, last=n)  # (B, n, C)
        torch.testing.assert_close(some, ours[:, -n:], atol=1e-6, rtol=1e-6)
    w = torch.randn(ours[:, -3:].shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for last in (3, None):
        model.zero_grad(set_to_none=True)
        (model.hidden_states(tokens, mask, last=last)[:, -3:] * w).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    for k, want in grads[1].items():  # float rounding, relative to gradients of up to ~300
        torch.testing.assert_close(grads[0][k], want, atol=1e-6 * want.abs().max(), rtol=1e-5)


def test_generate_pads_anywhere(model):
    clean, dirty = padded_batch()
    ref_tokens, ref_mask = left_pad_to(clean, dirty.size(1))
    for mask in (None, dirty != PAD_ID):
        a = generate(model, dirty, mask, 6, generator=torch.Generator().manual_seed(3))
        b = generate(model, ref_tokens, ref_mask, 6, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def logprob_batches(seed=1):
    """(dirty tokens, dirty mask, R, clean tokens, clean mask, R0, response pad mask (B, R)).
    Queries carry pads anywhere; responses R0 real tokens each with 3 pads inserted."""
    rng = random.Random(seed)
    queries, dirty_queries = padded_batch(seed)
    R0 = 5
    responses = random_lists(seed + 1, [R0] * len(queries))
    dirty_responses = [with_pads(r, 3, rng) for r in responses]
    dirty = torch.cat([dirty_queries, torch.tensor(dirty_responses)], 1)
    clean, clean_mask = left_pad([q + r for q, r in zip(queries, responses)])
    resp_pad = torch.tensor(dirty_responses) == PAD_ID
    return dirty, dirty != PAD_ID, R0 + 3, clean, clean_mask, R0, resp_pad


def test_response_logprobs_pads_anywhere(model):
    dirty, mask, R, clean, clean_mask, R0, resp_pad = logprob_batches()
    with torch.no_grad():
        lp, ent, _ = response_logprobs(model, dirty, mask, R, temperature=0.7)
        ref_lp, ref_ent, _ = response_logprobs(model, clean, clean_mask, R0, temperature=0.7)
    assert (lp[resp_pad] == 0).all() and (ent[resp_pad] == 0).all()
    B = dirty.size(0)
    torch.testing.assert_close(lp[~resp_pad].view(B, R0), ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent[~resp_pad].view(B, R0), ref_ent, atol=1e-6, rtol=1e-6)


def test_kernel_path_pads_anywhere():
    """The Triton kernels (interpreter on CPU) see left padding only: rows with pads elsewhere are
    left-aligned before them, so they give the PyTorch path's results, and the clean lists'."""
    pytest.importorskip("triton")
    on, off = make_model("on"), make_model("off")
    dirty, mask, R, clean, clean_mask, R0, resp_pad = logprob_batches(seed=2)
    B = dirty.size(0)
    with torch.no_grad():
        h_on = on.hidden_states(dirty, mask)
        h_off = off.hidden_states(dirty, mask)
        h_clean = on.hidden_states(
            *left_pad_to([row[m].tolist() for row, m in zip(dirty, mask)], dirty.size(1))
        )
    torch.testing.assert_close(h_on, h_off, atol=1e-5, rtol=1e-5)
    for b in range(B):
        n = int(mask[b].sum())
        assert torch.equal(h_on[b, mask[b]], h_clean[b, -n:])
    lp, ent, _ = response_logprobs(on, dirty, mask, R, temperature=0.7)
    ref_lp, ref_ent, _ = response_logprobs(on, clean, clean_mask, R0, temperature=0.7)
    torch.testing.assert_close(lp[~resp_pad].view(B, R0), ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent[~resp_pad].view(B, R0), ref_ent, atol=1e-6, rtol=1e-6)
    assert (lp[resp_pad] == 0).all()


def test_reward_scores_pads_anywhere(model):
    """The reward model on OpenAI's layout (query right-padded with pads inserted, response padded
    after truncation and in between) gives exactly the clean lists' scores."""
    import copy

    import reward

    torch.manual_seed(1)
    rm = reward.RewardModel(copy.deepcopy(model)).eval()
    queries, dirty_q = padded_batch(seed=3)
    rng = random.Random(3)
    responses = random_lists(4, [5, 2, 6, 1])
    dirty_r = [with_pads(r, 2, rng) + [PAD_ID] * (6 - len(r)) for r in responses]
    with torch.no_grad():
        ours = rm.score(dirty_q, dirty_q != PAD_ID, torch.tensor(dirty_r))
        same_width = rm(
            *left_pad_to([q + r for q, r in zip(queries, responses)], 8 + dirty_q.size(1))
        )
    assert torch.equal(ours, same_width)
    clean = reward.score_tokens(rm, queries, responses)
    torch.testing.assert_close(ours, clean, atol=1e-6, rtol=1e-6)
    assert torch.equal(reward.score_tokens(rm, [row.tolist() for row in dirty_q], dirty_r), clean)


def test_rollout_pads_anywhere(model):
    """ppo.rollout with raw queries holding pads (as OpenAI's files do) gives exactly the clean
    queries' rollout: samples, log-probs, values, scores, rewards."""
    import copy

    import ppo
    import reward
    from machinery import tasks

    torch.manual_seed(2)
    rm = reward.RewardModel(copy.deepcopy(model)).eval()
    policy = ppo.PolicyAndValue(copy.deepcopy(model)).eval()
    cfg = ppo.Config(model="tiny", batch_size=4, micro_batch_size=2, device="cpu")
    task = dataclasses.replace(tasks.get_task("sentiment"), response_length=6)
    rng = random.Random(5)
    clean = random_lists(5, [7, 3, 12, 1])
    dirty = [with_pads(q, 3, rng) + [PAD_ID] * 2 for q in clean]
    out = [
        ppo.rollout(policy, model, rm, task, qs, cfg, 0.1, torch.Generator().manual_seed(0), "cpu")
        for qs in (dirty, clean)
    ]
    tensors = [k for k, v in out[1].items() if isinstance(v, torch.Tensor)]
    assert {"responses", "logprobs", "ref_logprobs", "values", "scores", "rewards"} <= set(tensors)
    for k in tensors:
        assert torch.equal(out[0][k], out[1][k]), k

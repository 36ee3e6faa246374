"""Fused context attention (model.blocks.context_attention) computes what the additive-mask formulation did.

Two references: the attention written out in float64 here (softmax of q k^T / sqrt(d) + the Post-RPE bias, with
the lower-right causal mask over the own keys), and the renderer's former masked path, kept as
`ContextSelfAttention.masked_reference`; both must agree with the fused path to 1e-5, values and gradients.
"""

import pytest
import torch

from model import blocks
from model.blocks import ContextSelfAttention, context_attention
from tests.test_model import KINDS, ar_context, make

pytestmark = pytest.mark.usefixtures("one_thread")


def written_out(q, k, v, causal, key_bias):
    """softmax(q k^T / sqrt(d) + bias, own keys after the query's position masked) v, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, n_k = q.shape[2], k.shape[2]
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_bias is not None:
        logits = logits + key_bias.double()[None, :, None, :]
    if causal:
        n_ctx = n_k - n_q
        for i in range(n_q):  # query i sees the whole context and own keys 0..i
            logits[:, :, i, n_ctx + i + 1:] = float("-inf")
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("n_ctx", [0, 48])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_q", [1, 17])
def test_fused_attention_equals_the_written_out_attention(n_ctx, causal, bias, n_q):
    g = torch.Generator().manual_seed(n_ctx + 3 * causal + 7 * bias + n_q)
    b, h, d = 2, 4, 16
    q, k, v = (torch.randn(b, h, n, d, generator=g, requires_grad=True) for n in (n_q, n_ctx + n_q, n_ctx + n_q))
    key_bias = torch.randn(h, n_ctx + n_q, generator=g, requires_grad=True) if bias else None
    leaves = [q, k, v] + ([key_bias] if bias else [])
    out = context_attention(q, k, v, causal, key_bias)
    ref = written_out(q, k, v, causal, key_bias)
    assert out.shape == (b, h, n_q, d)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    refs = torch.autograd.grad((ref * w.double()).sum(), leaves)
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-5)


def run_patch(model, ctx, ids, mask, tokens, masked: bool):
    """Loss, logits, states and every parameter's gradient of one training forward/backward."""
    model.zero_grad(set_to_none=True)
    ContextSelfAttention.masked_reference = masked
    try:
        out = model.train()(tokens, ctx, ids, mask, generator=torch.Generator().manual_seed(5))
        out.loss.backward()
    finally:
        ContextSelfAttention.masked_reference = False
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("kind,rpe", KINDS)
def test_renderer_fused_equals_the_masked_formulation(kind, rpe):
    """A whole patch step (loss, logits, stored states, gradients) with a context of several patches."""
    m, ids, mask, ctx = ar_context(rpe, (2, 1, 12, 12), "down-right-forward")
    if kind != "ar":
        model = make(kind, rpe)
        model.load_state_dict(m.state_dict(), strict=False)
        m = model
    assert ctx.length > 0
    tokens = torch.randint(0, m.cfg.vocab_size, (2, m.cfg.tokens_per_patch), generator=torch.Generator().manual_seed(9))
    fused, g_fused = run_patch(m, ctx, ids, mask, tokens, masked=False)
    ref, g_ref = run_patch(m, ctx, ids, mask, tokens, masked=True)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused.logits, ref.logits, rtol=0, atol=1e-5)
    for a, b in zip(fused.states, ref.states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert g_fused.keys() == g_ref.keys() and any(".table" in n for n in g_fused)
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=0, atol=1e-5, msg=name)


def test_cpu_causal_mask_is_built_once_per_shape_not_per_layer_or_step():
    blocks._cpu_lower_right_mask.cache_clear()
    m, ids, mask, ctx = ar_context("pre", (2, 1, 12, 12), "down-right-forward")
    tokens = torch.randint(0, m.cfg.vocab_size, (2, m.cfg.tokens_per_patch))
    blocks._cpu_lower_right_mask.cache_clear()
    for _ in range(3):
        m(tokens, ctx, ids, mask).loss.backward()
    info = blocks._cpu_lower_right_mask.cache_info()
    assert m.cfg.n_layer > 1 and info.misses == 1 and info.hits == 3 * m.cfg.n_layer - 1
    built = blocks._cpu_lower_right_mask(3, 5, torch.float32, torch.device("cpu"))
    assert torch.isinf(built).tolist() == [[False, False, False, True, True], [False] * 4 + [True], [False] * 5]



@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused CUDA kernels need a CUDA device")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_cuda_fused_attention_runs_without_the_math_kernel(dtype, atol, bias):
    """On CUDA the lower-right causal mask and the folded Post-RPE bias must reach the flash or memory-efficient
    kernel (the math kernel is switched off here), forward and backward, and give the written-out numbers."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(1)
    b, h, n_q, n_ctx, d = 2, 12, 257, 3072, 64  # base's heads and a full window of 12 patches of 256 tokens
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for n in (n_q, n_ctx + n_q, n_ctx + n_q))
    key_bias = (0.1 * torch.randn(h, n_ctx + n_q, device="cuda", generator=g)).requires_grad_() if bias else None
    leaves = [q, k, v] + ([key_bias] if bias else [])
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        out = context_attention(q, k, v, True, key_bias)
        grads = torch.autograd.grad(out.float().square().sum(), leaves)
    ref = written_out(q, k, v, True, key_bias)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)
    refs = torch.autograd.grad(ref.square().sum(), leaves)
    for got, want in zip(grads, refs):
        scale = want.double().abs().max().item()
        torch.testing.assert_close(got.double() / scale, want.double() / scale, rtol=0, atol=atol)

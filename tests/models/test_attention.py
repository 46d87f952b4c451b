"""Attention kernels against dense references; every ViT x RPE combination gets gradients and learns."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import autograd_performer, perturbed_rpe, qkv
from vit_rpe.models import VisionTransformer
from vit_rpe.models import attention as attention_module
from vit_rpe.models import fused as fused_module
from vit_rpe.models.attention import KERNELS, PerformerAttention, build_kernel, default_nb_features
from vit_rpe.models.rpe import RPES as RPES_REGISTRY
from vit_rpe.models.rpe import RelativePositionMask, build_rpe
from vit_rpe.utils.errors import ConfigError

# every registered kernel and mask family (user ones join by registering; rotary families have
# their own suite, test_rope.py, and the contract suite, test_contract.py)
MASK_FAMILIES = tuple(
    sorted(name for name, cls in RPES_REGISTRY.items() if issubclass(cls, RelativePositionMask))
)
RPE_CASES = [(family, distance) for family in MASK_FAMILIES for distance in ("l1", "l2")]
ATTENTIONS = tuple(sorted(KERNELS))
RPES = ("none", *MASK_FAMILIES)


def brute_force_features(kernel, x):
    """phi written out without the kernel's stabilisers."""
    if not isinstance(kernel, PerformerAttention):
        return torch.where(x > 0, x + 1, torch.exp(x))
    w, d = kernel.projection.to(x.dtype), x.shape[-1]
    x = x / d**0.25
    return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])


def brute_force_output(kernel, q, k, v, mask):
    """out_i = sum_j M_ij A_ij v_j / sum_j M_ij A_ij, one query at a time."""
    fq, fk = brute_force_features(kernel, q), brute_force_features(kernel, k)
    out = torch.empty_like(v)
    for i in range(q.shape[2]):
        weights = (fq[:, :, i : i + 1] * fk).sum(-1)  # [B, H, L]
        if mask is not None:
            weights = weights * mask[None, :, i]
        out[:, :, i] = (weights[..., None] * v).sum(2) / weights.sum(-1, keepdim=True)
    return out


def feature_kernel(name, d, dtype):
    kernel = build_kernel(name, d, eps=0.0) if name == "linear" else PerformerAttention(d, eps=0.0)
    return kernel.to(dtype).eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("family,distance", RPE_CASES)
@pytest.mark.parametrize("name", ["linear", "performer"])
def test_feature_kernels_with_rpe_equal_brute_force(name, family, distance, prefix, dtype, tol):
    rpe = perturbed_rpe(family, distance, prefix, dtype=dtype)
    kernel = feature_kernel(name, 8, dtype)
    q, k, v = qkv(2, rpe.num_tokens, dtype=dtype, scale=0.5)
    expected = brute_force_output(kernel, q.double(), k.double(), v.double(), rpe.mask().double())
    if rpe.separable:
        rpe.kron_tile = 3  # several tile rows and columns: every branch of the tiled product
    for impl in ["quadratic", "dense", "fft"] + (["kron"] if rpe.separable else []):
        rpe.impl = impl
        out = kernel(q, k, v, rpe)
        assert out.dtype == dtype
        err = (out.double() - expected).abs().max().item()
        assert err < tol, (impl, err)


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_feature_kernels_without_rpe_equal_brute_force(name):
    kernel = feature_kernel(name, 8, torch.float64)
    q, k, v = qkv(2, 1 + 63, scale=0.5)
    torch.testing.assert_close(
        kernel(q, k, v), brute_force_output(kernel, q, k, v, None), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("family,distance", RPE_CASES)
def test_softmax_with_rpe_is_masked_softmax(family, distance, prefix):
    rpe = perturbed_rpe(family, distance, prefix)
    kernel = build_kernel("softmax", 8).eval()
    q, k, v = qkv(2, rpe.num_tokens)
    mask = rpe.mask()
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    expected = torch.softmax(scores + mask.log(), -1) @ v
    torch.testing.assert_close(kernel(q, k, v, rpe), expected, rtol=1e-10, atol=1e-10)
    weights = mask * scores.exp()  # the multiplicative form of the same thing
    torch.testing.assert_close(expected, weights @ v / weights.sum(-1, keepdim=True), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        kernel.attention_matrix(q, k, rpe).double(), torch.softmax(scores + mask.log(), -1)
    )


def outputs_and_gradients(attend, inputs, rpe=None, weights=None) -> list[torch.Tensor]:
    """attend(q, k, v) on fresh leaf copies of ``inputs``, then its output and the gradients of q, k,
    v and of every parameter of ``rpe`` for the loss sum(out * weights) (a loss that is not a sum)."""
    if rpe is not None:
        rpe.zero_grad(set_to_none=True)
    q, k, v = (x.clone().requires_grad_(True) for x in inputs)
    out = attend(q, k, v)
    (out if weights is None else out * weights).sum().backward()
    return [out, q.grad, k.grad, v.grad, *([] if rpe is None else [p.grad for p in rpe.parameters()])]


def masked_softmax(q, k, v, rpe):
    """softmax(q k^T / sqrt(d) + log M) v, written out for autograd."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + rpe.log_mask(), -1) @ v


def assert_all_close(got, expected):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("family", ["general", "exp", "poly"])
def test_softmax_rpe_gradients_equal_masked_softmax(family, prefix, monkeypatch):
    """The CPU path (flash forward, chunked backward) against autograd through the explicit
    softmax: the output and the gradients of q, k, v and every mask parameter."""
    monkeypatch.setattr(fused_module, "SCORES_CHUNK", 1)  # one batch element per chunk
    rpe = perturbed_rpe(family, "l1", prefix)
    kernel = build_kernel("softmax", 8).train()
    inputs = qkv(2, rpe.num_tokens, batch=3)
    weights = torch.randn(3, 2, rpe.num_tokens, 8, dtype=torch.float64)
    assert_all_close(
        outputs_and_gradients(lambda q, k, v: kernel(q, k, v, rpe), inputs, rpe, weights),
        outputs_and_gradients(lambda q, k, v: masked_softmax(q, k, v, rpe), inputs, rpe, weights),
    )


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """Softmax attention with a mask takes the flex path on the CPU too (forward only: CPU flex
    attention has no backward), compiled afresh."""
    monkeypatch.setattr(attention_module, "FLEX_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(attention_module, "_compiled_flex", None)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_flex_attention_compiles_once_for_every_batch_size(flex_on_cpu, monkeypatch):
    """A new batch size (the last partial batch, evaluation) reuses the compiled kernels. The first
    batch equals the number of heads on purpose: shapes that share a size must not pin the batch.
    Recompiles are dynamo's decision, so the eager backend stands in for inductor's minutes of
    code generation (the slow test below compiles with inductor)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(attention_module, "FLEX_BACKEND", "eager")
    rpe = perturbed_rpe("general", "l1", 1, dtype=torch.float32, grid=(3, 5))
    kernel = build_kernel("softmax", 8).eval()
    counters.clear()
    for batch in (2, 3, 5, 3):
        q, k, v = qkv(2, rpe.num_tokens, dtype=torch.float32, batch=batch)
        with torch.no_grad():
            out = kernel(q, k, v, rpe)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=rpe.log_mask())
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_softmax_rpe_falls_back_to_the_fused_path_when_flex_fails(flex_on_cpu, monkeypatch):
    """A compile failure (here: no Triton) warns once, and the layer computes the same outputs
    and gradients by the fused path; flex attention is not tried again."""
    calls = []

    def flex_without_triton(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Cannot find a working triton installation.\nMore details follow")

    monkeypatch.setattr(attention_module, "flex_attention", flex_without_triton)
    monkeypatch.setattr(attention_module, "FLEX_BACKEND", "eager")
    rpe = perturbed_rpe("exp", "l1", 1)
    kernel = build_kernel("softmax", 8).train()
    inputs = qkv(2, rpe.num_tokens, batch=3)
    with pytest.warns(UserWarning, match="flex attention failed .*triton installation"):
        got = outputs_and_gradients(lambda q, k, v: kernel(q, k, v, rpe), inputs, rpe)
    assert_all_close(got, outputs_and_gradients(lambda q, k, v: masked_softmax(q, k, v, rpe), inputs, rpe))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(*inputs, rpe)
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["softmax", "performer", "linear"])
def test_rpe_attention_never_holds_batch_by_heads_scores(name, monkeypatch):
    """On CPU no tensor of B x H x L x L elements is made, forward or backward (softmax, and the
    feature kernels with impl=quadratic: MaskedKernelMatrix, and for Performer MaskedFavorAttention);
    the straightforward paths they replace make several: SDPA's math path for a learned mask,
    autograd through (M * fq fk^T) v1."""
    from torch.utils._python_dispatch import TorchDispatchMode

    batch, heads = 4, 2
    rpe = perturbed_rpe("general", "l1", 1, heads=heads, dtype=torch.float32)
    rpe.impl = "quadratic"
    tokens = rpe.num_tokens

    class LargestScores(TorchDispatchMode):
        """The most elements of any [..., L, L] tensor an op makes."""

        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.shape[-2:] == (tokens, tokens):
                    self.largest = max(self.largest, t.numel())
            return out

    monkeypatch.setattr(fused_module, "SCORES_CHUNK", heads * tokens * tokens)
    kernel = build_kernel(name, 8).train()
    sizes = {}
    for path in ("chunked", "straightforward"):
        if path == "straightforward":
            monkeypatch.setattr(fused_module, "cpu_flash_attention", None)
            monkeypatch.setattr(
                fused_module.MaskedKernelMatrix, "apply", lambda fq, fk, v1, m: (m * (fq @ fk.mT)) @ v1
            )
            monkeypatch.setattr(PerformerAttention, "attend", attention_module.FeatureMapAttention.attend)
        q, k, v = (x.requires_grad_(True) for x in qkv(heads, tokens, dtype=torch.float32, batch=batch))
        with LargestScores() as mode:
            kernel(q, k, v, rpe).sum().backward()
        sizes[path] = mode.largest
    assert sizes["chunked"] < 2 * heads * tokens * tokens  # one batch element's scores at a time
    assert sizes["straightforward"] >= batch * heads * tokens * tokens


@pytest.mark.parametrize("name", ATTENTIONS)
@pytest.mark.parametrize("impl", ["quadratic", "dense", "fft"])
def test_zero_block_hides_masked_keys(name, impl):
    """Keys below the query row get M = 0: outputs never see them (row-specific denominators)."""
    rpe = build_rpe("general", (4, 5), 2, 0, "l1", impl).double()
    with torch.no_grad():
        rpe.bias[:, : 4 - 1] = -1e4  # dy = y_query - y_key < 0  ->  exp(-1e4) = 0
    # eps=0: FAVOR+'s additive feature epsilon is not invariant to the keys' global max
    kernel = build_kernel(name, 8, **({} if name == "softmax" else {"eps": 0.0})).double().eval()
    q, k, v = qkv(2, 20)
    out = kernel(q, k, v, rpe)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 15:] += torch.randn_like(k2[:, :, 15:])  # the last grid row
    v2[:, :, 15:] += torch.randn_like(v2[:, :, 15:])
    out2 = kernel(q, k2, v2, rpe)
    torch.testing.assert_close(out[:, :, :15], out2[:, :, :15], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(out[:, :, 15:], out2[:, :, 15:])


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize(
    "grid,impl",
    [((3, 4), "quadratic"), ((7, 9), "quadratic"), ((3, 4), None), ((5, 6), "kron"), ((3, 4), "fft")],
)
def test_performer_gradients_equal_autograd(grid, impl, prefix, monkeypatch):
    """Outputs and gradients (q, k, v, every mask parameter) of Performer attention against autograd
    through the written-out formulas, with eps > 0 (its place relative to the stabilisers matters):
    quadratic runs MaskedFavorAttention (3 x 4: the kernel matrix kept for the backward; 7 x 9: made
    again there, one batch element at a time), the other products PositiveRandomFeatures."""
    monkeypatch.setattr(fused_module, "SCORES_CHUNK", 1)
    rpe = None
    if impl is not None:
        rpe = perturbed_rpe("exp", "l1", prefix, grid=grid)
        rpe.impl, rpe.kron_tile = impl, 2
    tokens = prefix + grid[0] * grid[1]
    kernel = PerformerAttention(8).double().train()
    kernel.redraw_interval = 0
    inputs = qkv(2, tokens, batch=3, scale=0.7)
    weights = torch.randn(3, 2, tokens, 8, dtype=torch.float64)
    mask = (lambda: None) if rpe is None else rpe.mask
    assert_all_close(
        outputs_and_gradients(lambda q, k, v: kernel(q, k, v, rpe), inputs, rpe, weights),
        outputs_and_gradients(
            lambda q, k, v: autograd_performer(kernel, q, k, v, mask()), inputs, rpe, weights
        ),
    )


def test_performer_eval_is_deterministic_and_redraws_on_schedule():
    kernel = PerformerAttention(8, redraw_interval=3)
    q, k, v = qkv(2, 10, dtype=torch.float32)
    kernel.eval()
    first = kernel(q, k, v)
    for _ in range(5):
        torch.testing.assert_close(kernel(q, k, v), first, rtol=0, atol=0)
    kernel.train()
    w0 = kernel.projection.clone()
    kernel(q, k, v)
    kernel(q, k, v)
    assert torch.equal(kernel.projection, w0)
    kernel(q, k, v)  # the third training step redraws
    assert not torch.equal(kernel.projection, w0)
    w1 = kernel.projection.clone()
    kernel.eval()
    kernel(q, k, v)
    assert torch.equal(kernel.projection, w1)
    # the schedule survives a state_dict round trip, and a copy draws the same next matrix
    clone = PerformerAttention(8, redraw_interval=3)
    clone.load_state_dict(kernel.state_dict())
    assert torch.equal(clone.projection, w1) and clone.steps == 3
    never = PerformerAttention(8, redraw_interval=0).train()
    w = never.projection.clone()
    for _ in range(4):
        never(q, k, v)
    assert torch.equal(never.projection, w)


def test_performer_redraws_only_in_the_planned_share_of_training():
    kernel = PerformerAttention(8, redraw_interval=2, redraw_fraction=0.5).train()
    kernel.plan_redraws(total_steps=10)  # the task's call: steps 2 and 4 redraw, 6, 8 and 10 do not
    q, k, v = qkv(2, 10, dtype=torch.float32)
    draws = []
    for _ in range(10):
        kernel(q, k, v)
        draws.append(kernel.draws)
    assert draws == [0, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    with pytest.raises(ConfigError, match=r"redraw_fraction=1\.5"):
        PerformerAttention(8, redraw_fraction=1.5)


def test_training_plans_the_redraws_from_the_runs_length(train_config, tmp_path):
    from vit_rpe.train import train

    overrides = ("model=performer", "trainer.max_epochs=2", "trainer.limit_train_batches=4")
    train(train_config(*overrides, "model.net.attention_kwargs.redraw_interval=3"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    schedules = [v for k, v in state["state_dict"].items() if k.endswith("_extra_state") and "draws" in v]
    # 8 steps, redraws up to step 4 (half): step 3 redraws, step 6 does not
    assert schedules and all(s["steps"] == 8 and s["draws"] == 1 for s in schedules)


def test_compiled_performer_redraws_on_schedule_without_recompiling():
    """Under torch.compile (model.compile=true) the redraw counter, a plain int, stays out of the
    graph: it once made dynamo recompile on every training step until its limit (8), after which
    the whole model ran eagerly. The eager backend stands in for inductor (same tracing)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    kernel = PerformerAttention(8, redraw_interval=3).train()
    counter = CompileCounter()
    compiled = torch.compile(kernel, backend=counter)
    q, k, v = qkv(2, 10, dtype=torch.float32)
    w0 = kernel.projection.clone()
    for step in range(1, 13):
        torch.testing.assert_close(compiled(q, k, v), kernel.eval()(q, k, v).detach(), rtol=1e-5, atol=1e-6)
        kernel.train()
        assert kernel.steps == step and kernel.draws == step // 3
    assert not torch.equal(kernel.projection, w0)
    assert counter.frame_count <= 2  # the first trace (and one more for the train/eval flag)
    torch._dynamo.reset()


def test_orthogonal_features_have_chi_norms_and_orthogonal_blocks():
    kernel = PerformerAttention(16, nb_features=40)
    assert default_nb_features(16) == int(16 * math.log(16))
    w = kernel.projection.double()
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-5)
    assert 2.5 < w.norm(dim=1).mean() < 5.5  # chi(16) has mean ~3.9


def test_favor_approximates_softmax_and_improves_with_features():
    d, tokens = 8, 32
    q, k, v = qkv(1, tokens, d=d, dtype=torch.float32, scale=0.4, batch=4)
    exact = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1) @ v
    errors = []
    for m in (8, 64, 512):
        err = 0.0
        for seed in range(4):
            torch.manual_seed(seed)
            kernel = PerformerAttention(d, nb_features=m).eval()
            err += (kernel(q, k, v) - exact).pow(2).mean().sqrt().item() / 4
        errors.append(err)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1 * exact.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name", ATTENTIONS)
def test_half_precision_stays_finite(name):
    rpe = build_rpe("poly", (6, 6), 2, 1, "l1", "fft")
    kernel = build_kernel(name, 16).train()
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 37, d=16, dtype=torch.float32, scale=6.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel(q.bfloat16(), k.bfloat16(), v.bfloat16(), rpe)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.isfinite(rpe.cls_logit.grad).all()


def test_build_kernel_errors_name_the_choices():
    with pytest.raises(ValueError, match="performer"):
        build_kernel("cosformer", 8)
    with pytest.raises(ValueError, match="attention_kwargs"):
        build_kernel("performer", 8, nb_feature=3)
    with pytest.raises(ValueError, match="attn_drop_rate"):
        build_kernel("linear", 8, attn_drop=0.1)
    assert build_kernel("performer", 8, nb_features=None).nb_features == default_nb_features(8)


def tiny_vit(attention, rpe, **kwargs):
    return VisionTransformer(
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=32,
        depth=2,
        num_heads=4,
        attention=attention,
        rpe=rpe,
        **kwargs,
    )


@pytest.mark.parametrize("rpe", RPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_every_parameter_gets_a_gradient(attention, rpe, pool):
    torch.manual_seed(0)
    model = tiny_vit(attention, rpe, pool=pool, rpe_kwargs={"impl": "fft" if rpe == "poly" else "auto"})
    model(torch.randn(3, 1, 8, 8)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # With cls pooling the last block's mask cannot reach the output (the cls row of M is one
    # constant per head, which cancels), so its gradient is zero, cls_logit included (the model
    # skips it: VisionTransformer.forward_features); with mean pooling everything counts.
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    last = f"blocks.{len(model.blocks) - 1}.attn.rpe."
    assert not [n for n in zero if pool == "mean" or not n.startswith(last)]


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # [1797, 1, 8, 8]
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def train_digits(attention, rpe, steps=200, batch=32):
    """Plain-torch training of a tiny ViT; returns held-out accuracy (chance is 0.1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and kinder to a shared machine
    try:
        torch.manual_seed(0)
        xtr, ytr, xte, yte = digits()
        model = tiny_vit(attention, rpe, pool="mean")  # Performer: default redraw_interval (1000)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(ytr), (batch,), generator=g)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            return (model(xte).argmax(-1) == yte).float().mean().item()
    finally:
        torch.set_num_threads(threads)


FAST_LEARNING = [("softmax", "general"), ("performer", "exp"), ("linear", "poly")]


@pytest.mark.parametrize("attention,rpe", FAST_LEARNING)
def test_tiny_vit_learns_digits(attention, rpe):
    assert train_digits(attention, rpe) > 0.35  # chance is 0.1


@pytest.mark.slow
@pytest.mark.parametrize("rpe", RPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_model_and_rpe_learns_digits(attention, rpe):
    assert train_digits(attention, rpe) > 0.35


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("prefix", [0, 1])
def test_flex_score_mod_adds_log_mask(prefix, compiled, flex_on_cpu):
    """The CUDA path's score_mod, run by flex attention's eager CPU reference, and through the layer
    compiled by inductor for the CPU (forward only: CPU flex attention has no backward), once for
    two batch sizes."""
    from torch._dynamo.utils import counters

    from vit_rpe.models.attention import flex_attention, rpe_score_mod

    rpe = perturbed_rpe("general", "l1", prefix, dtype=torch.float32, grid=(3, 5))
    kernel = build_kernel("softmax", 8).eval()
    counters.clear()
    for batch in (2, 3):
        q, k, v = qkv(2, rpe.num_tokens, dtype=torch.float32, batch=batch)
        with torch.no_grad():
            out = kernel(q, k, v, rpe) if compiled else flex_attention(q, k, v, score_mod=rpe_score_mod(rpe))
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=rpe.log_mask())
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if compiled:
        assert counters["stats"]["unique_graphs"] == 1

"""The C kernel for Performer attention under a mask (favor.c, native.py) against the PyTorch
Function it stands in for, and how it is chosen, built, cached and given up."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import autograd_performer, needs_compiler, perturbed_rpe, qkv
from vit_rpe.models import fused as fused_module
from vit_rpe.models import native
from vit_rpe.models.attention import PerformerAttention, orthogonal_gaussian
from vit_rpe.models.fused import MaskedFavorAttention, NativeMaskedFavorAttention


@pytest.fixture
def fresh_builds(tmp_path, monkeypatch):
    """An empty kernel cache and no kernels loaded yet (also afterwards, for the other tests)."""
    monkeypatch.setenv("VIT_RPE_KERNEL_CACHE", str(tmp_path / "kernels"))
    native.favor_kernel.cache_clear()
    yield tmp_path / "kernels"
    native.favor_kernel.cache_clear()


def favor_inputs(batch, heads, tokens, head_dim, features, seed=0, empty_rows=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (0.8 * torch.randn(batch, heads, tokens, head_dim, generator=g) for _ in range(3))
    mask = torch.rand(heads, tokens, tokens, generator=g)
    if empty_rows:
        mask[:, 1] = 0.0  # a query that sees no key: its denominator is clamped at eps
    w = orthogonal_gaussian(features, head_dim, g)
    grad = torch.randn(batch, heads, tokens, head_dim, generator=g)
    return q, k, v, w, mask, grad


def outputs_and_grads(function, q, k, v, w, mask, grad, *lib):
    q, k, v, mask = (x.clone().requires_grad_(True) for x in (q, k, v, mask))
    out = function.apply(*lib, q, k, v, w, mask, 1e-6)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad, mask.grad]


def assert_close_to_max(actual, expected, rel=1e-5):
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=rel * e.abs().max().item())


@needs_compiler
@pytest.mark.parametrize(
    "shape,empty_rows",
    [
        ((4, 4, 16, 24, 76), False),  # the quickstart's layer: 4x4 grid, head dim 24, m = 76
        ((3, 2, 17, 8, 16), True),  # a cls token; rows beyond the vector width; a clamped row
        ((2, 1, 5, 3, 7), False),  # every size below one vector
        ((2, 3, 49, 32, 110), False),  # 7x7 patches, several vectors of features and of tokens
    ],
)
def test_native_kernel_equals_the_pytorch_function(shape, empty_rows):
    """Output and the gradients of q, k, v and the mask, against MaskedFavorAttention (itself
    tested against autograd through the written-out formulas, test_attention.py)."""
    *_, tokens, head_dim, features = shape
    lib = native.favor_kernel(tokens, head_dim, features)
    assert lib is not None
    inputs = favor_inputs(*shape, empty_rows=empty_rows)
    expected = outputs_and_grads(MaskedFavorAttention, *inputs)
    actual = outputs_and_grads(NativeMaskedFavorAttention, *inputs, lib)
    assert_close_to_max(actual, expected)


@needs_compiler
def test_native_kernel_reads_a_non_contiguous_gradient():
    """In a model the gradient arrives as a permuted view (the heads merged back into tokens); the
    kernel reads a contiguous copy, which must live until the call returns."""
    q, k, v, w, mask, grad = favor_inputs(32, 4, 16, 24, 76)
    grad = grad.transpose(1, 2).contiguous().transpose(1, 2)  # same values, token-major memory
    assert not grad.is_contiguous()
    lib = native.favor_kernel(16, 24, 76)
    expected = outputs_and_grads(MaskedFavorAttention, q, k, v, w, mask, grad)
    for _ in range(3):
        assert_close_to_max(
            outputs_and_grads(NativeMaskedFavorAttention, q, k, v, w, mask, grad, lib), expected
        )


@needs_compiler
def test_native_kernel_gives_the_same_numbers_on_any_thread_count():
    lib = native.favor_kernel(16, 8, 16)
    inputs = favor_inputs(8, 2, 16, 8, 16)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(outputs_and_grads(NativeMaskedFavorAttention, *inputs, lib))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_compiler
def test_native_kernel_passes_nan_on():
    """A NaN in a query makes its head's outputs NaN, as in PyTorch: -ffast-math must not hide a
    diverged run."""
    q, k, v, w, mask, _ = favor_inputs(2, 2, 16, 8, 16)
    q[1, 0, 3, 2] = float("nan")
    lib = native.favor_kernel(16, 8, 16)
    out = NativeMaskedFavorAttention.apply(lib, q, k, v, w, mask, 1e-6)
    assert out[1, 0, 3].isnan().all()
    assert not out[0].isnan().any()


@needs_compiler
def test_performer_layer_runs_the_kernel_and_matches_autograd(monkeypatch):
    """Performer + an exp RPE (impl=quadratic) in float32, as the quickstart trains it, opted in:
    the layer goes through the C kernel, and its output and gradients match autograd through the
    formulas."""
    calls, apply = [], NativeMaskedFavorAttention.apply
    monkeypatch.setattr(NativeMaskedFavorAttention, "apply", lambda *args: calls.append(1) or apply(*args))
    rpe = perturbed_rpe("exp", "l1", 1, dtype=torch.float32, grid=(3, 4))
    rpe.impl = "quadratic"
    kernel = PerformerAttention(8, native_kernel=True).train()
    kernel.redraw_interval = 0
    q, k, v = (x.requires_grad_(True) for x in qkv(2, 13, dtype=torch.float32, batch=3))
    out = kernel(q, k, v, rpe)
    grads = torch.autograd.grad(out.square().sum(), [q, k, v, *rpe.parameters()])
    q2, k2, v2 = (x.detach().requires_grad_(True) for x in (q, k, v))
    expected = autograd_performer(kernel, q2, k2, v2, rpe.mask())
    expected_grads = torch.autograd.grad(expected.square().sum(), [q2, k2, v2, *rpe.parameters()])
    assert calls == [1]
    assert_close_to_max([out, *grads], [expected, *expected_grads], rel=1e-4)


@pytest.mark.parametrize(
    "case",
    [
        "float32",
        "float64",
        "projection_learns",
        "tokens_beyond_2m",
        "too_many_tokens",
        "too_many_features",
        "head_too_wide",
    ],
)
def test_kernel_applies_only_where_it_holds(case, monkeypatch):
    """float32 on the CPU with the projection a constant; not in float64 (the tests' references),
    nor with a learned projection, L > 2m (the kept kernel matrix would outgrow
    the features), or beyond the sizes where the kernel is faster (bench favor)."""
    monkeypatch.setattr(native, "favor_kernel", lambda *shape: "lib")
    tokens = {"tokens_beyond_2m": 40, "too_many_tokens": native.MAX_TOKENS + 1}.get(case, 16)
    features = {"too_many_tokens": native.MAX_FEATURES, "too_many_features": native.MAX_FEATURES + 1}.get(
        case, 16
    )
    head_dim = native.MAX_HEAD_DIM + 1 if case == "head_too_wide" else 8
    q = torch.zeros(1, 1, tokens, head_dim, dtype=torch.float64 if case == "float64" else torch.float32)
    w = torch.zeros(features, head_dim, requires_grad=case == "projection_learns")
    assert native.favor_kernel_for(q, w) == ("lib" if case == "float32" else None)


@needs_compiler
def test_kernel_is_built_once_then_loaded_from_the_cache(fresh_builds, monkeypatch):
    assert native.favor_kernel(6, 4, 9) is not None
    built = list(fresh_builds.glob("favor_6_4_9_*.so"))
    assert len(built) == 1
    native.favor_kernel.cache_clear()
    monkeypatch.setattr(native, "build", lambda *args: pytest.fail("built again"))
    assert native.favor_kernel(6, 4, 9) is not None
    assert list(fresh_builds.iterdir()) == built  # no temporary files left either


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_without_a_working_compiler_performer_falls_back_with_a_warning(
    compiler, fresh_builds, tmp_path, monkeypatch, caplog
):
    """No compiler, or one whose build fails: a warning that says what to do, and the PyTorch
    path's numbers."""
    if compiler == "failing":
        script = tmp_path / "cc"
        script.write_text("#!/bin/sh\necho 'favor.c: error: broken toolchain' >&2\nexit 1\n")
        script.chmod(0o755)
        monkeypatch.setenv("CC", str(script))
    else:
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    q, k, v, w, mask, _ = favor_inputs(2, 2, 16, 8, 16)
    with caplog.at_level(logging.WARNING, logger="vit_rpe.models.native"):
        out = fused_module.masked_favor_attention(q, k, v, w, mask, 1e-6, native_kernel=True)
    torch.testing.assert_close(out, MaskedFavorAttention.apply(q, k, v, w, mask, 1e-6), rtol=0, atol=0)
    message = caplog.text
    assert "slower PyTorch path" in message
    assert ("broken toolchain" in message) if compiler == "failing" else ("$CC" in message)
    assert not list(fresh_builds.glob("*.so"))


@needs_compiler
def test_an_unwritable_cache_falls_back_and_names_the_setting(fresh_builds, tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("VIT_RPE_KERNEL_CACHE", str(blocked / "kernels"))
    with caplog.at_level(logging.WARNING, logger="vit_rpe.models.native"):
        assert native.favor_kernel(6, 4, 9) is None
    assert "VIT_RPE_KERNEL_CACHE" in caplog.text and str(blocked) in caplog.text


def performer_exp_outputs(seed: int = 0, **attention_kwargs) -> list[torch.Tensor]:
    """Logits and every gradient of a small Performer + exp ViT (4x4 grid: the quadratic path)."""
    from vit_rpe.models import VisionTransformer

    torch.manual_seed(seed)
    net = VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2,
        attention="performer", attention_kwargs=attention_kwargs, rpe="exp",
    )  # fmt: skip
    x = torch.randn(4, 1, 8, 8)
    logits = net(x)
    logits.square().sum().backward()
    return [logits.detach(), *(p.grad for p in net.parameters() if p.grad is not None)]


@pytest.mark.parametrize("compiler", ["present", "missing"])
def test_the_default_path_compiles_nothing_and_warns_nothing(
    compiler, fresh_builds, tmp_path, monkeypatch, caplog
):
    """The default (no opt-in) gives the same numbers on machines with and without a C compiler:
    PyTorch's, bit for bit, with no build and no warning."""
    reference = performer_exp_outputs()  # whatever this machine has
    if compiler == "missing":
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "build", lambda *args: pytest.fail("the default path built a kernel"))
    with caplog.at_level(logging.DEBUG, logger="vit_rpe.models.native"):
        outputs = performer_exp_outputs()
    for got, expected in zip(outputs, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert caplog.text == "" and not fresh_builds.exists()


@needs_compiler
def test_opting_in_builds_the_kernel_and_keeps_the_numbers(fresh_builds):
    default = performer_exp_outputs()
    native_outputs = performer_exp_outputs(native_kernel=True)
    assert list(fresh_builds.glob("favor_*.so"))  # built for this shape, on first use
    for got, expected in zip(native_outputs, default, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

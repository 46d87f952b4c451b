"""Multi-head self-attention with interchangeable kernels.

Every kernel has one signature, ``kernel(q, k, v, rpe=None) -> out`` with q, k, v and out of
shape [B, H, L, d], so softmax, Performer and linear attention, each with or without a relative
position mask, are swapped by name and tested against one dense reference,
``kernel.attention_matrix(q, k, rpe)`` [B, H, L, L] (used for plots, never in training).

With a mask M (see rpe.py) every kernel computes out_i = sum_j M_ij A_ij v_j / sum_j M_ij A_ij:
softmax adds log M to the scores; the feature-map kernels (A_ij = phi(q_i).phi(k_j)) apply M to
Z_j = phi(k_j) (x) [v_j, 1] and read numerator and the row-specific denominator off phi(q_i).(M Z)_i.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import flex_attention

from vit_rpe.models import fused
from vit_rpe.models.fused import LearnedBiasAttention, PositiveRandomFeatures, masked_favor_attention
from vit_rpe.models.rope import RotaryPositionEmbedding
from vit_rpe.models.rpe import RelativePositionMask
from vit_rpe.utils.errors import ConfigError
from vit_rpe.utils.registry import Registry

EPS = 1e-6
# Devices whose softmax attention with a mask runs flex attention (CPU flex attention has no
# backward), and the compiler backend that builds its kernels.
FLEX_DEVICES = ("cuda",)
FLEX_BACKEND = "inductor"
_compiled_flex = None  # flex_attention, compiled on first use; False once that failed


def flex_attention_or_none(q, k, v, score_mod) -> torch.Tensor | None:
    """flex_attention(q, k, v, score_mod), or None where it cannot run here.

    Compiled once with a dynamic batch size (a new batch size, such as the last partial batch,
    reuses the kernels; only a batch of one compiles again). If compiling or running it fails
    (no Triton, an unsupported GPU), a warning says why and the caller's fused path takes over for
    the rest of the process.
    """
    global _compiled_flex
    if _compiled_flex is False:
        return None
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, backend=FLEX_BACKEND)
    for x in (q, k, v):
        torch._dynamo.maybe_mark_dynamic(x, 0)
    try:
        return _compiled_flex(q, k, v, score_mod=score_mod)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # whatever the compiler raises: the fused path computes the same
        _compiled_flex = False
        first_line = str(err).strip().split("\n", 1)[0][:200]
        warnings.warn(
            f"flex attention failed ({type(err).__name__}: {first_line}); softmax attention with an "
            "RPE mask uses the dense [H, L, L] log-mask instead from now on",
            stacklevel=3,
        )
        return None


class AttentionKernel(nn.Module):
    """The contract of a kernel (built-in or a user's, tests/models/test_contract.py holds each to it).

    Built as ``cls(head_dim, attn_drop=..., **model.net.attention_kwargs)``; ``forward(q, k, v,
    rpe=None)`` and ``attention_matrix(q, k, rpe=None)`` as in the module docstring. ``rpe_impls``:
    the mask products (``rpe.impl`` after ``auto`` resolves) it computes with; a mask with another
    impl is refused when the model is built. Rotary encodings (rpe=rope) need nothing of a kernel:
    they rotate q and k before it.
    """

    rpe_impls: tuple[str, ...] = ()

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError

    def attention_matrix(self, q, k, rpe: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError


KERNELS = Registry("attention", "model.net.attention", AttentionKernel)
register_kernel = KERNELS.register
ALL_IMPLS = ("quadratic", "dense", "kron", "fft")


@register_kernel("softmax")
class SoftmaxAttention(AttentionKernel):
    """softmax(q k^T / sqrt(d) + log M) v.

    Without a mask: PyTorch's fused scaled_dot_product_attention. With one: on CUDA, flex
    attention with a score_mod that looks the bias up from the [H, 2Hg-1, 2Wg-1] offset table
    (nothing L x L is stored); on CPU, ``LearnedBiasAttention`` (the fused flash kernel with log M
    as an additive [H, L, L] mask, broadcast over the batch); elsewhere, with attention dropout,
    and where flex attention fails, SDPA with that mask.
    """

    rpe_impls = ALL_IMPLS  # log M is added to the scores whatever the impl

    def __init__(self, head_dim: int, attn_drop: float = 0.0, use_flex: bool = True):
        super().__init__()
        self.scale = head_dim**-0.5
        self.attn_drop = attn_drop
        self.use_flex = use_flex

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        drop = self.attn_drop if self.training else 0.0
        if rpe is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        if self.use_flex and drop == 0.0 and q.device.type in FLEX_DEVICES:
            out = flex_attention_or_none(q, k, v, rpe_score_mod(rpe))
            if out is not None:
                return out
        bias = rpe.log_mask().to(q.dtype)  # [H, L, L]
        if q.device.type == "cpu" and fused.cpu_flash_attention is not None and drop == 0.0:
            return LearnedBiasAttention.apply(q, k, v, bias, self.scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)

    def attention_matrix(self, q, k, rpe: nn.Module | None = None) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)).float() * self.scale  # [B, H, L, L]
        if rpe is not None:
            scores = scores + rpe.log_mask().float()
        return scores.softmax(-1)


@register_kernel("lsa")
class LocalitySelfAttention(SoftmaxAttention):
    """Locality self-attention (LSA; Lee, Lee and Song 2021): softmax(q k^T / tau + log M - inf * I) v.

    Two changes to softmax attention sharpen it on small datasets: a learned temperature tau (one
    per layer, starting at sqrt(d), the usual scale) and the diagonal masked out, so a token attends
    to the others rather than mostly to itself. Runs as SDPA with the diagonal (and the RPE's
    log M) as an additive mask. For the linear kernels (Performer, elu+1) both parts have a
    linear-time analogue (scale q and k by tau^-1/2 before the features; subtract the self term
    phi(q_i).phi(k_i) v_i from numerator and denominator), not built here: docs/attention.md.
    """

    def __init__(self, head_dim: int, attn_drop: float = 0.0):
        super().__init__(head_dim, attn_drop, use_flex=False)
        self.log_temperature = nn.Parameter(torch.tensor(0.5 * math.log(head_dim)))

    def bias(self, q: torch.Tensor, k: torch.Tensor, rpe: nn.Module | None) -> torch.Tensor:
        """[Lq, Lk] (or [H, L, L] with an RPE): -inf where query i meets key i, plus log M. The
        queries are the first Lq tokens (all of them, or the cls token alone in a ViT's last block
        with cls pooling)."""
        rows = torch.arange(q.shape[-2], device=q.device)
        diagonal = torch.zeros(q.shape[-2], k.shape[-2], dtype=q.dtype, device=q.device)
        diagonal[rows, rows] = float("-inf")
        return diagonal if rpe is None else rpe.log_mask().to(q.dtype) + diagonal

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        drop = self.attn_drop if self.training else 0.0
        # SDPA scales by 1/sqrt(d): a query scaled by sqrt(d) / tau gives q.k / tau
        q = q * (self.log_temperature.neg().exp() / self.scale).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(q, k, rpe), dropout_p=drop)

    def attention_matrix(self, q, k, rpe: nn.Module | None = None) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)).float() * self.log_temperature.neg().exp().float()
        return (scores + self.bias(q, k, rpe).float()).softmax(-1)


def rpe_score_mod(rpe: nn.Module):
    """A flex-attention score_mod adding log M[h, q, kv] computed from the offset table.

    Its forward is tested against the additive mask with flex attention's eager CPU reference
    and compiled by inductor for the CPU (slow tests); the CUDA kernels and the backward are
    untested (no GPU here).
    """
    table = rpe.log_mask_offsets()  # [H, 2Hg-1, 2Wg-1]
    p = rpe.num_prefix_tokens
    hg, wg = rpe.grid_size
    cls = rpe.cls_logit if p else table.new_zeros(table.shape[0])

    def score_mod(score, b, h, q_idx, kv_idx):
        qi, ki = (q_idx - p).clamp(min=0), (kv_idx - p).clamp(min=0)
        grid_bias = table[h, qi // wg - ki // wg + hg - 1, qi % wg - ki % wg + wg - 1]
        bias = torch.where((q_idx < p) | (kv_idx < p), cls[h], grid_bias)
        return score + bias.to(score.dtype)

    return score_mod


class FeatureMapAttention(AttentionKernel):
    """Linear attention with positive features phi: out_i = phi(q_i).D_i / phi(q_i).d_i.

    Without a mask D and d are global sums (O(L m d)); with a mask D = M Z, and the mask's
    ``masked_kernel_matmul`` computes phi(q_i).D_i (quadratic / dense / kron / fft, rpe.py). The
    feature math runs in fp32 outside autocast and denominators are clamped at ``eps``, so
    half-precision training stays finite. A subclass defines ``features`` and gets every mask product.
    """

    rpe_impls = ALL_IMPLS

    def __init__(self, head_dim: int, attn_drop: float = 0.0, eps: float = EPS):
        super().__init__()
        if attn_drop:
            raise ConfigError(
                f"{type(self).__name__} has no attention matrix to drop out: set model.net.attn_drop_rate=0"
            )
        self.head_dim = head_dim
        self.eps = eps

    def features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(q), phi(k): [B, H, L, m], positive."""
        raise NotImplementedError

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        dtype = q.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        with torch.autocast(q.device.type, enabled=False):
            out = self.attend(q.to(compute), k.to(compute), v.to(compute), rpe)
        return out.to(dtype)

    def attend(self, q, k, v, rpe: nn.Module | None) -> torch.Tensor:
        """The attention in the compute dtype: features, then the (masked) products."""
        fq, fk = self.features(q, k)  # [B, H, L, m]
        if rpe is None:
            kv = fk.transpose(-2, -1) @ v  # [B, H, m, d]
            num = fq @ kv  # [B, H, L, d]
            den = fq @ fk.sum(2, keepdim=True).transpose(-2, -1)  # [B, H, L, 1]
        else:
            v1 = F.pad(v, (0, 1), value=1.0)  # [B, H, L, d+1]
            out = rpe.masked_kernel_matmul(fq, fk, v1)  # [B, H, L, d+1]: sum_m phi(q_i)_m (M Z)_i,m
            num, den = out[..., :-1], out[..., -1:]
        return num / den.clamp_min(self.eps)

    def attention_matrix(self, q, k, rpe: nn.Module | None = None) -> torch.Tensor:
        """The dense, row-normalised M * (phi(q) phi(k)^T) this kernel implicitly applies."""
        with torch.autocast(q.device.type, enabled=False):
            fq, fk = self.features(q.float(), k.float())
            a = fq @ fk.transpose(-2, -1)  # [B, H, L, L]
            if rpe is not None:
                a = a * rpe.mask().float()
            return a / a.sum(-1, keepdim=True).clamp_min(self.eps)


@register_kernel("linear")
class LinearAttention(FeatureMapAttention):
    """phi(x) = elu(x) + 1 (Katharopoulos et al., 2020)."""

    def features(self, q, k):
        return F.elu(q) + 1, F.elu(k) + 1


def default_nb_features(head_dim: int) -> int:
    return max(int(head_dim * math.log(head_dim)), 1) if head_dim > 1 else 1


def orthogonal_gaussian(nb_features: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[m, d] rows: orthogonal within each d x d block (QR of a gaussian), scaled to chi(d) norms."""
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # sign fix: Haar-distributed rows
    w = torch.cat(blocks)[:nb_features]
    norms = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).float()


@register_kernel("performer")
class PerformerAttention(FeatureMapAttention):
    """FAVOR+ (Choromanski et al., 2020): positive orthogonal random features.

    phi(x) = exp(w.x - |x|^2/2) / sqrt(m) on x = q / d^(1/4) and k / d^(1/4), so that
    E[phi(q).phi(k)] = exp(q.k / sqrt(d)). Stabilisers: queries subtract their own max over
    features (cancels in the ratio); keys subtract ONE max over all keys and features of the head
    (a common factor, so it cancels even with a row-specific RPE denominator).

    The projection is a buffer, redrawn every ``redraw_interval`` training forward passes (0 =
    never) during the first ``redraw_fraction`` of training, and never in eval. Draws use a
    generator seeded by (seed, draw count), so every process of a distributed run draws the same
    matrix. Why stop: a redraw changes every attention score at once, and late in a cosine schedule
    the lr is too small to adapt; the CPU study lost ~4 points of validation accuracy to a redraw
    at 90% of its steps (docs/studies.md). The task tells the layer its run's length
    (``plan_redraws``); until then, or with ``redraw_fraction=1``, redraws go on throughout.
    """

    def __init__(
        self,
        head_dim: int,
        attn_drop: float = 0.0,
        nb_features: int | None = None,
        redraw_interval: int = 1000,
        ortho: bool = True,
        eps: float = EPS,
        redraw_fraction: float = 0.5,
        native_kernel: bool = False,
    ):
        super().__init__(head_dim, attn_drop, eps)
        if not 0 <= redraw_fraction <= 1:
            raise ConfigError(
                f"model.net.attention_kwargs.redraw_fraction={redraw_fraction}: the share of training that "
                "redraws the features, in [0, 1] (0: never, 1: throughout)"
            )
        self.nb_features = nb_features or default_nb_features(head_dim)
        self.native_kernel = native_kernel  # opt-in: favor.c, compiled on first use (native.py)
        self.redraw_interval = redraw_interval
        self.redraw_fraction = redraw_fraction
        self.redraw_until: int | None = None  # the last step that may redraw: plan_redraws
        self.ortho = ortho
        # Plain ints (saved through get_extra_state): checking the schedule never syncs a GPU.
        self.seed = int(torch.randint(0, 2**62, ()))
        self.draws = 0
        self.steps = 0
        self.register_buffer("projection", self.draw(), persistent=True)

    def extra_repr(self) -> str:
        return (
            f"nb_features={self.nb_features}, redraw_interval={self.redraw_interval}, "
            f"redraw_fraction={self.redraw_fraction}"
        )

    def plan_redraws(self, total_steps: int) -> None:
        """Redraw only in the first ``redraw_fraction`` of a run of ``total_steps`` training steps."""
        self.redraw_until = int(total_steps * self.redraw_fraction)

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws, "steps": self.steps}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.draws, self.steps = (
            state["seed"],
            state["draws"],
            state["steps"],
        )

    def draw(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.draws)
        if self.ortho:
            return orthogonal_gaussian(self.nb_features, self.head_dim, gen)
        return torch.randn(self.nb_features, self.head_dim, generator=gen)

    @torch.no_grad()
    def redraw(self) -> None:
        self.draws += 1
        self.projection.copy_(self.draw())

    def forward(self, q, k, v, rpe: nn.Module | None = None) -> torch.Tensor:
        if self.training and self.redraw_interval > 0:
            self.count_step()
        return super().forward(q, k, v, rpe)

    @torch.compiler.disable
    def count_step(self) -> None:
        """One training pass on the redraw schedule. Eager under torch.compile: dynamo would make
        the plain-int counter a constant of the graph and recompile on every step."""
        self.steps += 1
        late = self.redraw_until is not None and self.steps > self.redraw_until
        if self.steps % self.redraw_interval == 0 and not late:
            self.redraw()

    def attend(self, q, k, v, rpe: nn.Module | None) -> torch.Tensor:
        """With rpe.impl=quadratic (small grids) features, masked kernel matrix and normalisation
        are one step, masked_favor_attention (fused.py: one autograd Function, or the C kernel):
        the same numbers in a fraction of the operations, which at small grids are most of the
        attention's time."""
        if rpe is not None and rpe.impl == "quadratic":
            mask = rpe.mask().to(q.dtype)  # [H, L, L]
            w = self.projection.to(q.dtype)
            return masked_favor_attention(q, k, v, w, mask, self.eps, native_kernel=self.native_kernel)
        return super().attend(q, k, v, rpe)

    def features(self, q, k):
        w = self.projection.to(q.dtype)  # [m, d]
        fq = PositiveRandomFeatures.apply(q, w, -1, self.eps)  # [B, H, L, m]
        fk = PositiveRandomFeatures.apply(k, w, (-2, -1), self.eps)
        return fq, fk


def build_kernel(name: str, head_dim: int, **kwargs) -> AttentionKernel:
    """The kernel ``name`` (registered, or an import path) for heads of size ``head_dim``;
    None-valued options take defaults."""
    cls = KERNELS.resolve(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        return cls(head_dim, **kwargs)
    except TypeError as err:
        raise ConfigError(f"bad model.net.attention_kwargs for attention={name}: {err}") from None


class MultiHeadSelfAttention(nn.Module):
    """Project tokens to heads, run the kernel, merge heads back.

    ``rpe`` is a mask (RelativePositionMask, given to the kernel) or a rotary encoding
    (RotaryPositionEmbedding: q and k are rotated, and the kernel sees no mask).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel: nn.Module,
        rpe: nn.Module | None = None,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"embed_dim {dim} is not divisible by num_heads {num_heads}: "
                "change model.net.embed_dim or model.net.num_heads"
            )
        if isinstance(rpe, RelativePositionMask) and rpe.impl not in kernel.rpe_impls:
            raise ConfigError(
                f"attention {type(kernel).__name__} does not compute with an RPE mask of "
                f"model.net.rpe_kwargs.impl={rpe.impl} (it takes {list(kernel.rpe_impls) or 'no mask'}): "
                "choose another model.net.rpe_kwargs.impl or rpe=none"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.kernel = kernel
        self.rpe = rpe
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d]

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """[B, L, D] -> [B, L, D], or with ``cls_only`` the first (cls) token's output [B, 1, D].

        ``cls_only`` is exact, not an approximation: keys and values still come from every token,
        and the cls row of an RPE mask is one constant per head (exp(cls_logit), rpe.py), which
        cancels in the normalised attention (a constant softmax bias; a common factor of the
        numerator and denominator of the feature-map kernels), so the cls query sees the
        unmasked kernel. The RPE parameters are then unused; the zero tie gives them the
        gradient they have in the full computation (zero), so that DDP and AdamW see no change.
        """
        B, _, D = x.shape
        q, k, v, mask = self.positioned_heads(x)
        if cls_only:
            q = q[:, :, :1]
        out = self.kernel(q, k, v, None if cls_only else mask)  # [B, H, L or 1, d]
        if cls_only and mask is not None:
            out = out + 0.0 * sum(p.sum() for p in mask.parameters())
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.proj_drop(self.proj(out))

    def positioned_heads(self, x: torch.Tensor):
        """q, k, v [B, H, L, d] and the mask for the kernel: a rotary rpe rotates q and k instead,
        and the kernel gets no mask."""
        q, k, v = self.heads(x)
        if isinstance(self.rpe, RotaryPositionEmbedding):
            q, k = self.rpe(q, k)
            return q, k, v, None
        return q, k, v, self.rpe

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The [B, H, L, L] attention this layer applies to its input x [B, L, D] (for plots)."""
        q, k, _, mask = self.positioned_heads(x)
        return self.kernel.attention_matrix(q, k, mask)

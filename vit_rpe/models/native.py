"""C kernels compiled on first use for the shape at hand and cached on disk (favor.c): an opt-in.

Performer attention under an RPE mask on small grids is a chain of small steps; in C they run
one head at a time inside the L1 cache (docs/benchmarks.md). Only a run that asks for it
(``model.net.attention_kwargs.native_kernel=true``) builds the kernel, with the machine's C
compiler (``$CC``, else ``cc``) for one (tokens, head dim, features) shape, about a second, and
keeps it in ``$VIT_RPE_KERNEL_CACHE`` (default ``~/.cache/vit_rpe/kernels``) under a name that
hashes the source, the flags, the shape and the CPU, so a cluster's nodes of different kinds
never share a build. The default, and an opted-in run with no compiler or a failed build (with a
warning), is the PyTorch implementation (fused.py): the same numbers to rounding, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("favor.c")
VECTOR = 16  # favor.c's W: rows of the padded operands are multiples of it
# Beyond these sizes Performer takes the PyTorch path (fused.py): with more features the kernel's
# sums no longer fit the vector registers and it is no faster (`python -m vit_rpe.bench favor`,
# docs/benchmarks.md), and a head's buffers stay well within a thread's stack.
MAX_TOKENS, MAX_HEAD_DIM, MAX_FEATURES = 128, 64, 128
# Compile, then link, with the first flag set that works: OpenMP shares torch's runtime (same
# soname) where it is there; -ffast-math (compile only: linked, it would switch the whole process
# to flush-to-zero) lets glibc's vector expf in; libmvec holds it.
BUILDS = (
    (["-O3", "-march=native", "-ffast-math", "-fopenmp"], ["-fopenmp", "-lmvec", "-lm"]),
    (["-O3", "-march=native", "-ffast-math", "-fopenmp"], ["-fopenmp", "-lm"]),
    (["-O3", "-ffast-math", "-Wno-unknown-pragmas"], ["-lm"]),
)


def pad(size: int) -> int:
    return -(-size // VECTOR) * VECTOR


def cache_dir() -> Path:
    if "VIT_RPE_KERNEL_CACHE" in os.environ:
        return Path(os.environ["VIT_RPE_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vit_rpe" / "kernels"


def cpu_signature() -> str:
    """The CPU's model and instruction sets: what -march=native compiled for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


@functools.cache
def favor_kernel(tokens: int, head_dim: int, features: int) -> ctypes.CDLL | None:
    """favor.c built for this shape, loaded; None (after one warning) where it cannot be built."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        log.warning(
            "no C compiler (%s) found: Performer with an RPE runs on its slower PyTorch path; install one "
            "(e.g. gcc) or point $CC at it",
            compiler,
        )
        return None
    shape = [f"-DN={tokens}", f"-DD={head_dim}", f"-DM={features}"]
    try:  # what a build depends on besides its flags, read once for all of them
        identity = [SOURCE.read_text(), compiler, *shape, cpu_signature()]
    except OSError as err:  # favor.c missing from an install
        return unbuilt(compiler, str(err))
    errors = []
    for compile_flags, link_flags in BUILDS:
        key = hashlib.sha256("\n".join([*identity, *compile_flags, *link_flags]).encode()).hexdigest()[:20]
        path = cache_dir() / f"favor_{tokens}_{head_dim}_{features}_{key}.so"
        try:
            if not path.exists():
                build(compiler, [*compile_flags, *shape, "-fPIC"], link_flags, path)
            return declare(ctypes.CDLL(str(path)))
        except (OSError, subprocess.CalledProcessError) as err:
            errors.append(getattr(err, "stderr", None) or str(err))
    return unbuilt(compiler, errors[-1])


def unbuilt(compiler: str, error: str) -> None:
    """The warning for a kernel that could not be built or loaded; its caller runs PyTorch's path."""
    log.warning(
        "could not build the C kernel for Performer with an RPE (compiler %s, cache %s; $CC and "
        "$VIT_RPE_KERNEL_CACHE change them); it runs on its slower PyTorch path. Last error:\n%s",
        compiler,
        cache_dir(),
        error.strip(),
    )
    return None


def build(compiler: str, compile_flags: list[str], link_flags: list[str], path: Path) -> None:
    """Compile favor.c to ``path``, written under a temporary name and renamed, so processes
    building the same kernel at once (DDP ranks, test workers) never load a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the C kernel %s (once for this shape and machine)", path.name)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        obj, lib = Path(tmp) / "favor.o", Path(tmp) / path.name
        run = dict(check=True, capture_output=True, text=True)
        subprocess.run([compiler, *compile_flags, "-c", str(SOURCE), "-o", str(obj)], **run)
        subprocess.run([compiler, "-shared", str(obj), "-o", str(lib), *link_flags], **run)
        ctypes.CDLL(str(lib))  # loads here before it is published (unresolved symbols fail now)
        os.replace(lib, path)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument types of favor.c's two entry points: ints, then pointers and eps."""
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.favor_forward.argtypes = [i, i, i, p, p, p, p, p, f, p, p, p, p]
    lib.favor_backward.argtypes = [i, i, i, p, p, p, p, p, f, p, p, p, p, p, p, p, p, p]
    lib.favor_forward.restype = lib.favor_backward.restype = None
    return lib


def favor_kernel_for(q: torch.Tensor, w: torch.Tensor) -> ctypes.CDLL | None:
    """The kernel for Performer attention on q [B, H, L, d] with the projection w [m, d], where
    it applies: float32 on the CPU, w a constant (the projection buffer), outside torch.compile
    (which traces the PyTorch path), sizes within the kernel's limits, and L <= 2m, where the
    [B, H, L, L] kernel matrix it keeps for the backward is no bigger than the features (the
    rule MaskedFavorAttention keeps it by)."""
    _, _, tokens, head_dim = q.shape
    features = w.shape[0]
    if not (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and not w.requires_grad
        and not torch.compiler.is_compiling()
        and tokens <= min(MAX_TOKENS, 2 * features)
        and head_dim <= MAX_HEAD_DIM
        and features <= MAX_FEATURES
    ):
        return None
    return favor_kernel(tokens, head_dim, features)

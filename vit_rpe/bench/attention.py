"""Forward + backward time and peak memory of one attention kernel against grid size.

    python -m vit_rpe.bench attention [--out docs/bench] [--grids 8 16 32 64 128] [--quick]

Cases are kernel x RPE x impl: softmax (plain SDPA, and SDPA with the exp mask as an additive
bias), performer and linear (no RPE; exp-l1 via quadratic, dense, kron, fft; poly-l1 via quadratic,
dense, fft), and
``performer+exp/floor``: a lower bound on kron's time (``KronFloor``). The
input is one batch of ``--batch`` x ``--heads`` x (1 + Hg*Wg) tokens x ``--head-dim``; every
case starts from the same q, k, v and the mask's own parameters, and backpropagates a sum.
Each record has the time, the peak memory and the multiply-adds of the matrix products (``gmac``);
the environment has one large matmul's rate, the ceiling for any kernel made of such products.
Writes attention.json and attention.png under ``--out``.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vit_rpe.bench.common import (
    environment,
    matmul_rate,
    multiply_adds,
    peak_memory,
    steady_malloc,
    time_it,
    write_json,
)
from vit_rpe.models.attention import build_kernel
from vit_rpe.models.kron import KRON_TILE
from vit_rpe.models.rpe import build_rpe

CASES = [
    ("softmax", "none", "-"),
    ("softmax", "exp", "bias"),
    ("performer", "none", "-"),
    ("performer", "exp", "quadratic"),
    ("performer", "exp", "dense"),
    ("performer", "exp", "kron"),
    ("performer", "exp", "floor"),
    ("performer", "exp", "fft"),
    ("performer", "poly", "quadratic"),
    ("performer", "poly", "dense"),
    ("performer", "poly", "fft"),
    ("linear", "none", "-"),
    ("linear", "exp", "quadratic"),
    ("linear", "exp", "dense"),
    ("linear", "exp", "kron"),
    ("linear", "exp", "fft"),
]


class KronFloor(nn.Module):
    """Stands in for the exp mask with impl=kron, doing only the state products the tiled kron must do.

    ``tiled_exp_attend`` cuts the grid into strips of ``tile`` keys along each axis (two branches:
    row strips and column strips). In each branch every key's fk (x) v1 goes into its strip's
    state for both directions (before and after the query), and every query is contracted with
    both directions' states: 4 products of m x (d+1) per key and 4 per query, where plain
    Performer does 1 and 1. This does exactly those, as one matmul per branch and side, with no
    carrying between tiles, no spreading over rows and no in-tile attention, so its time is below
    kron's whatever those cost: if it alone is over 2x plain Performer, so is kron. (A branch exists
    only along an axis of more than one tile, as in ``tiled_exp_attend``.)
    """

    impl = "kron"

    def __init__(self, grid_size: tuple[int, int], tile: int = KRON_TILE):
        super().__init__()
        self.grid_size = grid_size
        self.tile = min(tile, *grid_size)

    def masked_kernel_matmul(self, fq: torch.Tensor, fk: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        hg, wg = self.grid_size
        p = fq.shape[2] - hg * wg
        e, t = v1.shape[-1], self.tile

        def strips(x: torch.Tensor, axis: int) -> torch.Tensor:  # [B, H, strips, tile, c], zero-padded
            x = F.pad(x[:, :, p:].unflatten(2, (hg, wg)), (0, 0, 0, -wg % t, 0, -hg % t))
            return x.movedim(axis, -2).reshape(*x.shape[:2], -1, t, x.shape[-1])

        grid_out = fq.new_zeros(*fq.shape[:2], hg * wg, e)
        for axis, size in ((3, wg), (2, hg)):  # row strips, column strips
            if size <= t:
                continue  # a single tile along this axis: kron has no such branch
            q, k, v = (strips(x, axis) for x in (fq, fk, v1))
            states = k.transpose(-2, -1) @ torch.cat([v, v], -1)  # both sides: [.., m, 2e]
            states = states.unflatten(-1, (2, e)).transpose(-3, -2).flatten(-3, -2)  # [.., 2m, e]
            out = torch.cat([q, q], -1) @ states  # [B, H, strips, tile, e]
            grid_out = grid_out + out.flatten(2, 3)[:, :, : hg * wg]  # token order: no matter here
        return torch.cat([fq[:, :, :p] @ (fk.transpose(-2, -1) @ v1), grid_out], dim=2)


def case_name(kernel: str, rpe: str, impl: str) -> str:
    return kernel if rpe == "none" else f"{kernel}+{rpe}/{impl}"


def fits(kernel: str, impl: str, tokens: int, args) -> bool:
    """Skip the L x L cases whose [H, L, L] matrices (per batch element for quadratic) alone pass
    --max-dense-mib, and dense beyond --max-dense-tokens (the slowest)."""
    if impl not in ("dense", "bias", "quadratic"):
        return True  # softmax without a mask is flash attention on CPU and GPU: O(L) memory
    if impl == "dense" and tokens > args.max_dense_tokens:
        return False
    mib = args.heads * tokens**2 * 4 / 2**20 * (args.batch if impl == "quadratic" else 1)
    return 3 * mib <= args.max_dense_mib


def make_case(kernel: str, rpe: str, impl: str, grid: int, args, device):
    """A closure running one forward + backward of the case, from fixed q, k, v."""
    torch.manual_seed(0)
    attn = build_kernel(kernel, args.head_dim).to(device).train()
    if hasattr(attn, "redraw_interval"):
        attn.redraw_interval = 0  # time the attention, not the redraw
    mask = None
    if impl == "floor":
        mask = KronFloor((grid, grid)).to(device)
    elif rpe != "none":
        mask = build_rpe(rpe, (grid, grid), args.heads, 1, "l1", impl if impl != "bias" else "auto").to(
            device
        )
    tokens = 1 + grid * grid
    q, k, v = (
        torch.randn(args.batch, args.heads, tokens, args.head_dim, device=device, requires_grad=True)
        for _ in range(3)
    )

    def step():
        attn(q, k, v, mask).sum().backward()
        q.grad = k.grad = v.grad = None
        if mask is not None:
            mask.zero_grad(set_to_none=True)

    return step


def run_grid(cases, grid: int, args, device) -> list[dict]:
    """Time the cases of one grid in turns (round robin), so a slow spell of a shared machine
    spreads over all of them; then measure each one's peak memory alone."""
    steps = {case: make_case(*case, grid, args, device) for case in cases}
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    for case, step in steps.items():  # warm-up; a very slow first call is its own measurement
        first = time_it(step, device, min_time=0.0, max_reps=1, slow=0.0)["time_s"]
        if first > 5.0:
            times[case].append(first)
    for _ in range(args.rounds):
        for case, step in steps.items():
            if sum(times[case]) < args.min_time * args.rounds or len(times[case]) < 1:
                times[case].append(time_it(step, device, min_time=0.0, max_reps=1, slow=0.0)["time_s"])
    records = []
    for case, step in steps.items():
        kernel, rpe, impl = case
        ts = sorted(times[case])
        record = {"kernel": kernel, "rpe": rpe, "impl": impl, "grid": grid, "tokens": 1 + grid * grid}
        record.update(time_s=ts[0], time_median_s=ts[len(ts) // 2], reps=len(ts))
        record["gmac"] = multiply_adds(step) / 1e9
        record["peak_mib"] = peak_memory(step, device)
        records.append(record)
        mem = record["peak_mib"]
        print(
            f"{grid:4d}x{grid:<4d} {case_name(*case):24s} {ts[0] * 1e3:10.1f} ms"
            f" (median {ts[len(ts) // 2] * 1e3:.1f}, {len(ts)} reps)"
            f"  {mem if mem is None else round(mem, 1)} MiB",
            flush=True,
        )
    del steps
    gc.collect()
    return records


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"softmax": "-", "performer": "--", "linear": ":"}
    for kernel, rpe, impl in CASES:
        rows = [r for r in records if (r["kernel"], r["rpe"], r["impl"]) == (kernel, rpe, impl)]
        if not rows:
            continue
        n = [r["tokens"] for r in rows]
        label = case_name(kernel, rpe, impl)
        marker = {
            "-": "o",
            "bias": "s",
            "quadratic": "D",
            "dense": "x",
            "kron": "^",
            "floor": ".",
            "fft": "v",
        }[impl]
        axes[0].plot(n, [r["time_s"] * 1e3 for r in rows], styles[kernel], marker=marker, label=label)
        mem = [(x, r["peak_mib"]) for x, r in zip(n, rows) if r["peak_mib"]]
        if mem:
            axes[1].plot(*zip(*mem), styles[kernel], marker=marker, label=label)
    for ax, ylabel in zip(axes, ("forward + backward (ms)", "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens L = 1 + Hg*Wg")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(records: list[dict], grids: list[int]) -> str:
    """Markdown: one row per case, time (ms) / peak MiB per grid."""
    head = "| case | " + " | ".join(f"{g}x{g}" for g in grids) + " |"
    lines = [head, "|" + "---|" * (len(grids) + 1)]
    for kernel, rpe, impl in CASES:
        cells = []
        for g in grids:
            row = next(
                (
                    r
                    for r in records
                    if (r["kernel"], r["rpe"], r["impl"], r["grid"]) == (kernel, rpe, impl, g)
                ),
                None,
            )
            if row is None:
                cells.append("-")
            else:
                mem = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "?"
                cells.append(f"{row['time_s'] * 1e3:.1f} / {mem}")
        lines.append(f"| {case_name(kernel, rpe, impl)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(records: list[dict]) -> list[str]:
    """The targets of issue #3, and the crossovers of the ``auto`` rule, as ratios within this run."""
    by = {(r["kernel"], r["rpe"], r["impl"], r["grid"]): r["time_s"] for r in records}
    pairs = [  # (numerator, denominator): each a (rpe, impl) of Performer
        (("exp", "kron"), ("none", "-")),
        (("exp", "floor"), ("none", "-")),
        (("exp", "dense"), ("exp", "kron")),
        (("exp", "quadratic"), ("exp", "kron")),
        (("exp", "dense"), ("exp", "fft")),
        (("poly", "quadratic"), ("poly", "fft")),
    ]
    lines = []
    for g in sorted({r["grid"] for r in records}):
        parts = []
        for top, bottom in pairs:
            a, b = by.get(("performer", *top, g)), by.get(("performer", *bottom, g))
            if a and b:
                parts.append(
                    f"{case_name('performer', *top)} / {case_name('performer', *bottom)} {a / b:.2f}x"
                )
        if parts:
            lines.append(f"{g}x{g}: " + ", ".join(parts))
    return lines


def rates_for_target(records: list[dict], matmul_gmac_s: float, target: float = 2.0) -> list[str]:
    """The GMAC/s kron's (and the floor's) matrix products would need, even with everything else
    free, to take ``target`` x plain Performer's time, against what they reach and what one large
    matmul reaches in the same run: where the need is above that ceiling, no arrangement of the
    same products meets the target on this device."""
    by = {(r["kernel"], r["rpe"], r["impl"], r["grid"]): r for r in records}
    lines = []
    for g in sorted({r["grid"] for r in records}):
        plain = by.get(("performer", "none", "-", g))
        if plain is None:
            continue
        budget = target * plain["time_s"]
        parts = []
        for impl in ("kron", "floor"):
            r = by.get(("performer", "exp", impl, g))
            if r is not None and r.get("gmac"):
                parts.append(
                    f"{impl} {r['gmac']:.3g} GMAC: needs {r['gmac'] / budget:.1f} GMAC/s"
                    f" (runs at {r['gmac'] / r['time_s']:.1f})"
                )
        if parts:
            lines.append(
                f"{g}x{g}, {target:g}x plain Performer = {budget * 1e3:.1f} ms: "
                + "; ".join(parts)
                + f"; one large matmul: {matmul_gmac_s:.1f} GMAC/s"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vit_rpe.bench attention", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="folder for attention.json/.png")
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="grid sides Hg=Wg")
    parser.add_argument("--quick", action="store_true", help="grids 4 and 8, short timing (a smoke test)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the cases of a grid")
    parser.add_argument("--max-dense-tokens", type=int, default=64 * 64 + 1, help="largest L for impl=dense")
    parser.add_argument("--max-dense-mib", type=float, default=2048, help="cap on L x L matrices per case")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--cases", nargs="*", default=None, help="only these, e.g. performer+exp/kron softmax"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.grids, args.min_time, args.rounds = [4, 8], 0.01, 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steady_malloc()
    cases = [c for c in CASES if args.cases is None or case_name(*c) in args.cases]

    records = []
    for grid in args.grids:
        todo = [case for case in cases if fits(case[0], case[2], 1 + grid * grid, args)]
        records += run_grid(todo, grid, args, device)

    env = environment(device) | {
        "batch": args.batch,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "nb_features": build_kernel("performer", args.head_dim).nb_features,
        "malloc_pinned": "memory passes only",
        "matmul_gmac_per_s": matmul_rate(device),
    }
    write_json(args.out / "attention.json", {"environment": env, "records": records})
    title = (
        f"one attention layer, batch {args.batch}, {args.heads} heads, head_dim {args.head_dim}, "
        f"m={env['nb_features']}, {env['device']} ({env['threads']} threads), torch {env['torch']}"
    )
    plot(records, args.out / "attention.png", title)
    print()
    print(table(records, args.grids))
    print()
    print("\n".join(ratios(records)))
    print("\n".join(rates_for_target(records, env["matmul_gmac_per_s"])))
    print(f"\nwrote {args.out / 'attention.json'} and {args.out / 'attention.png'}")
    return 0

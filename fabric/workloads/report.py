"""Summaries and plots of `fabric run train` results.

:func:`summary_table` prints one column per run: step time (wall and
emulated), final loss, memory, locality by tier, latency percentiles.
:func:`write_plots` writes PNGs with matplotlib's Agg backend (the optional
``plot`` extra): latency CDF (log axis), locality by host and tier (stacked
bars), loss and step time over steps, memory per process.  Runs passed
together are drawn side by side.
"""
from __future__ import annotations

import os

from .._units import format_size
from ..errors import FabricError

TIERS = ("local", "cached", "far", "remote")
TIER_COLOURS = {"local": "#4c9f70", "cached": "#8cc5e3", "far": "#e6a141", "remote": "#c8553d"}


class PlotsUnavailable(FabricError):
    """matplotlib is not installed."""

    code = "PLOTS_UNAVAILABLE"


def _ns(x: float) -> str:
    x = float(x)
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f} ns"


def _label(result: dict, path: str) -> str:
    c = result["config"]
    return f"{c['mode']} x{c['hosts']}"


def summary_table(results: list[dict], paths: list[str]) -> str:
    """A plain-text table, one column per result."""
    rows: list[tuple[str, list[str]]] = []

    def row(name, fn):
        rows.append((name, [fn(r) for r in results]))

    row("run", lambda r: _label(r, ""))
    row("file", lambda r: os.path.basename(paths[results.index(r)]))
    row("model", lambda r: f"{r['model']['params'] / 1e6:.2f}M params "
                           f"({format_size(r['model']['weights_bytes'])})")
    row("steps x batch", lambda r: f"{len(r['steps'])} x {r['config']['batch']}")
    row("inject / topology", lambda r: f"{r['config']['inject_effective']} / "
                                       f"{r['config']['topology_name']}")
    row("step time, wall (median)", lambda r: _ns(r["timing"]["step_wall_ns_median"]))
    row("step time, emulated (median)", lambda r: _ns(r["timing"]["step_emulated_ns_median"]))
    row("final loss", lambda r: f"{r['final_loss']:.6g}")
    row("weights memory (PSS, all workers)",
        lambda r: f"{format_size(r['memory']['weights_pss_bytes'])} = "
                  f"{r['memory']['weights_copies']:.2f} copies")
    row("total PSS, all workers", lambda r: format_size(r["memory"]["total_pss_bytes"]))
    row("total USS, all workers", lambda r: format_size(r["memory"]["total_uss_bytes"]))
    for t in TIERS:
        row(f"locality: {t}", lambda r, t=t: f"{100 * r['locality']['total'][t]['share']:.1f}% "
                                           f"({format_size(r['locality']['total'][t]['bytes'])})")
    row("page-cache hit rate", lambda r: f"{100 * r['locality']['hit_rate']:.1f}%")
    for kind in ("weights", "fabric"):
        for p in ("p50", "p99", "p999"):
            label = {"p50": "p50", "p99": "p99", "p999": "p99.9"}[p]
            row(f"{kind} access latency {label}",
                lambda r, k=kind, p=p: (_ns(r["latency"][k][f"{p}_ns"])
                                        if r["latency"][k]["count"] else "-"))
    width0 = max(len(n) for n, _ in rows) + 2
    widths = [max(len(v[i]) for _, v in rows) + 2 for i in range(len(results))]
    lines = []
    for n, vals in rows:
        lines.append(n.ljust(width0) + "".join(v.rjust(w) for v, w in zip(vals, widths)))
    lines.insert(2, "-" * (width0 + sum(widths)))
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable('plots need matplotlib: pip install "cxl-fabric[plot]" '
                               '(the table above needs nothing)') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plots(results: list[dict], paths: list[str], out_dir: str) -> list[str]:
    """Write every plot for ``results`` into ``out_dir``; return the file paths."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    labels = [f"{_label(r, p)} ({os.path.basename(p)})" if len(results) > 1 and
              sum(_label(q, "") == _label(r, "") for q in results) > 1 else _label(r, p)
              for r, p in zip(results, paths)]
    files = []
    for name, fn in (("latency_cdf", _plot_cdf), ("locality", _plot_locality),
                     ("loss", _plot_loss), ("step_time", _plot_step_time),
                     ("memory", _plot_memory)):
        fig = fn(plt, results, labels)
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(path)
    return files


def _plot_cdf(plt, results, labels):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (r, lab) in enumerate(zip(results, labels)):
        for kind, style in (("fabric", "-"), ("weights", "--")):
            b = r["latency"][kind]["buckets"]
            if not b:
                continue
            xs = [v for v, _ in b]
            total = sum(c for _, c in b)
            ys, acc = [], 0
            for _, c in b:
                acc += c
                ys.append(acc / total)
            ax.step(xs, ys, style, where="post", color=f"C{i}", label=f"{lab}: {kind} accesses")
    ax.set_xscale("log")
    ax.set_xlabel("charged latency per access (ns, log)")
    ax.set_ylabel("fraction of accesses")
    ax.set_title("Latency CDF of declared accesses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_locality(plt, results, labels):
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, r, lab in zip(axes[0], results, labels):
        hosts = list(r["locality"]["by_host"])
        bottom = [0.0] * len(hosts)
        for t in TIERS:
            vals = [r["locality"]["by_host"][h][t] / 2 ** 20 for h in hosts]
            ax.bar(hosts, vals, bottom=bottom, color=TIER_COLOURS[t], label=t)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(lab)
    axes[0][0].set_ylabel("MiB accessed")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Locality by host and tier")
    return fig


def _plot_loss(plt, results, labels):
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (r, lab) in enumerate(zip(results, labels)):
        ax.plot([s["step"] for s in r["steps"]], [s["loss"] for s in r["steps"]],
                color=f"C{i}", linestyle="-" if i % 2 == 0 else "--", label=lab)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (global batch MSE)")
    ax.set_title("Loss over steps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_step_time(plt, results, labels):
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (r, lab) in enumerate(zip(results, labels)):
        steps = [s["step"] for s in r["steps"]]
        ax.plot(steps, [s["wall_ns"] / 1e6 for s in r["steps"]], color=f"C{i}",
                label=f"{lab}: wall")
        ax.plot(steps, [s["emulated_ns"] / 1e6 for s in r["steps"]], color=f"C{i}",
                linestyle=":", label=f"{lab}: emulated")
    ax.set_xlabel("step")
    ax.set_ylabel("step time (ms)")
    ax.set_title("Step time over steps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_memory(plt, results, labels):
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(results)), 4))
    x, ticks, names = 0, [], []
    for i, (r, lab) in enumerate(zip(results, labels)):
        for w in r["memory"]["per_worker"]:
            weights = w["weights_pss_bytes"] / 2 ** 20
            rest = max(0.0, w["pss_bytes"] / 2 ** 20 - weights)
            ax.bar(x, weights, color=f"C{i}", label="weights" if x == 0 else None)
            ax.bar(x, rest, bottom=weights, color=f"C{i}", alpha=0.35,
                   label="rest of the process" if x == 0 else None)
            ticks.append(x)
            names.append(f"{lab}\n{w['host']}" if w["rank"] == 0 else w["host"])
            x += 1
        x += 1
    ax.axhline(results[0]["memory"]["weights_bytes"] / 2 ** 20, color="k", linestyle="--",
               linewidth=1, label="one copy of the weights")
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, fontsize=7)
    ax.set_ylabel("PSS (MiB)")
    ax.set_title("Memory per worker process (measured PSS)")
    ax.legend(fontsize=8)
    return fig

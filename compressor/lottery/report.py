"""Reports over one or more seeds: mean ± std tables in markdown and the paper's two plots
(test accuracy vs weights remaining, early-stop iteration vs weights remaining)."""

import json
import statistics
from collections import defaultdict
from pathlib import Path

from compressor.errors import CompressorError

VARIANT_STYLE = {"ticket": ("winning ticket", "C0", "o"), "reinit": ("reinit", "C1", "s"),
                 "random_mask": ("random mask", "C2", "^")}


def load_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "records.json"
    if not path.exists():
        raise CompressorError(f"{run_dir} has no records.json: run the lottery there first")
    try:
        return json.loads(path.read_text())["records"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise CompressorError(f"{path} is damaged; rerun the lottery command (it rewrites the "
                              "file from its checksummed state.pt)") from None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[list[dict]]) -> list[dict]:
    """One row per (round, variant): mean and std over runs (seeds) of every measure."""
    groups = defaultdict(list)
    for records in runs:
        for rec in records:
            groups[(rec["round"], rec["variant"])].append(rec)
    rows = []
    for (round_index, variant), recs in sorted(groups.items(),
                                               key=lambda kv: (kv[0][0], kv[0][1] != "ticket")):
        row = {"round": round_index, "variant": variant, "seeds": len(recs)}
        for key in ("weights_remaining", "best_acc", "final_acc", "best_step"):
            row[key], row[key + "_std"] = _mean_std([float(r[key]) for r in recs])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Accuracies in percent; ± is the standard deviation over seeds."""
    lines = ["| round | variant | weights remaining | best test acc | final test acc | "
             "early-stop iteration | seeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['variant']} | {100 * r['weights_remaining']:.1f}% | "
            f"{100 * r['best_acc']:.2f} ± {100 * r['best_acc_std']:.2f} | "
            f"{100 * r['final_acc']:.2f} ± {100 * r['final_acc_std']:.2f} | "
            f"{r['best_step']:.0f} ± {r['best_step_std']:.0f} | {r['seeds']} |")
    return "\n".join(lines)


def _series(rows, variant, key):
    picked = [r for r in rows if r["variant"] == variant or (variant != "ticket" and
                                                               r["round"] == 0)]
    picked.sort(key=lambda r: -r["weights_remaining"])
    return ([100 * r["weights_remaining"] for r in picked], [r[key] for r in picked],
            [r[key + "_std"] for r in picked])


def plot(rows: list[dict], prefix: str | Path, title: str = "") -> list[Path]:
    """<prefix>_accuracy.png and <prefix>_early_stop.png; x is weights remaining (log, falling
    to the right as in the paper); controls start from the shared dense point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = [r for r in rows if r["round"] == 0]
    paths = []
    for key, ylabel, suffix in (("best_acc", "test accuracy at early stop", "accuracy"),
                                ("best_step", "early-stop iteration", "early_stop")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, (label, color, marker) in VARIANT_STYLE.items():
            if not any(r["variant"] == variant for r in rows):
                continue
            x, y, err = _series(rows, variant, key)
            ax.errorbar(x, y, yerr=err, label=label, color=color, marker=marker, capsize=3)
        if dense and key == "best_acc":
            ax.axhline(dense[0][key], color="gray", linestyle="--", label="dense")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = Path(f"{prefix}_{suffix}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(run_dirs: list[str | Path], out_dir: str | Path, name: str = "lottery",
                 title: str = "") -> Path:
    """<out_dir>/<name>.md with the table and the two plots; returns the markdown path."""
    rows = aggregate([load_records(d) for d in run_dirs])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = plot(rows, out / name, title)
    body = [f"# {title or 'Lottery ticket report'}", "", "Runs: " + ", ".join(
        f"`{d}`" for d in run_dirs), "", markdown(rows), ""]
    body += [f"![{p.stem}]({p.name})" for p in images]
    path = out / f"{name}.md"
    path.write_text("\n".join(body) + "\n")
    return path

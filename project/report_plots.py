"""The report's figures. Each function returns a matplotlib Figure (the tests check that no two labels
overlap); `save` writes and closes it. Models are told apart by a legend or an axis of names, never by
labels placed beside points, which collide when two models score alike."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the non-interactive backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MARKERS = "osD^vP*Xhp<>"


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_vs_size(points: dict[str, dict]) -> Figure:
    """Test accuracy (with its 95% interval) against ONNX file size, one marker per model in the legend."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (name, m) in enumerate(points.items()):
        low, high = m["accuracy_interval"]
        accuracy = m["accuracy"] * 100
        ax.errorbar(
            m["bytes"] / 1024,
            accuracy,
            yerr=[[accuracy - low * 100], [high * 100 - accuracy]],
            fmt=MARKERS[i % len(MARKERS)],
            capsize=3,
            label=name,
        )
    ax.set(
        xscale="log",
        xlabel="ONNX file size (KiB, log scale)",
        ylabel="test accuracy (%), 95% interval",
        title="Accuracy vs size",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, list[dict]]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in histories.items():
        ax.plot([h["epoch"] for h in history], [h["val_accuracy"] * 100 for h in history], marker=".", label=name)
    ax.set(xlabel="epoch (within its stage)", ylabel="validation accuracy (%)", title="Training curves")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def dots_with_intervals(ax, rows: range, values: list[float], intervals: list[list[float]], color: str) -> None:
    """One dot per model with its 95% interval: dots, not bars, as the axis does not start at 0."""
    low = [v - i[0] * 100 for v, i in zip(values, intervals, strict=True)]
    high = [i[1] * 100 - v for v, i in zip(values, intervals, strict=True)]
    ax.errorbar(values, rows, xerr=[low, high], fmt="o", color=color, capsize=3)


def what_the_student_kept(models: dict[str, dict]) -> Figure:
    """One row per model, three panels: clean test accuracy and mean accuracy over the corruption suite, each
    with its 95% interval, and ECE before and after temperature scaling."""
    names = list(models)
    rows = range(len(names))
    fig, (clean, corrupted, ece) = plt.subplots(1, 3, sharey=True, figsize=(11, 1.6 + 0.42 * len(names)))
    dots_with_intervals(
        clean,
        rows,
        [models[n]["accuracy"] * 100 for n in names],
        [models[n]["accuracy_interval"] for n in names],
        "tab:blue",
    )
    clean.set(title="clean test accuracy (%)", yticks=list(rows), yticklabels=names)
    dots_with_intervals(
        corrupted,
        rows,
        [models[n]["corrupted"]["accuracy"] * 100 for n in names],
        [models[n]["corrupted"]["accuracy_interval"] for n in names],
        "tab:orange",
    )
    corrupted.set(title="accuracy under corruption (%)")
    for offset, key, label in ((-0.2, "calibration", "raw"), (0.2, "calibrated", "temperature-scaled")):
        ece.barh([r + offset for r in rows], [models[n][key]["ece"] * 100 for n in names], height=0.4, label=label)
    ece.set(title="ECE (%), lower is better")
    ece.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    for ax in (clean, corrupted, ece):
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, prune="both"))  # no tick label at a panel's edge
    clean.invert_yaxis()  # the first model on top
    fig.tight_layout()
    return fig

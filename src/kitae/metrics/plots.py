"""Confusion-matrix and training-history plots with Japanese labels.

Figures are built with :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot), so plotting
touches no global matplotlib state and works in headless training jobs. Japanese glyphs come
from the IPAexGothic font bundled with the ``matplotlib-fontja`` package, passed explicitly as
``FontProperties(fname=...)``: importing ``matplotlib_fontja`` itself would change the global
``rcParams`` font family, which is why the font file is located without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from kitae.metrics.multilabel import multilabel_confusion_matrix

__all__ = ["plot_confusion_matrix", "plot_history", "plot_multilabel_confusion_grid"]

_FONTJA_TTF = ("fonts", "ipaexg.ttf")


@functools.lru_cache(maxsize=1)
def _japanese_font_file() -> str | None:
    """Path of the IPAexGothic file shipped with matplotlib-fontja, or None if not installed."""
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*_FONTJA_TTF)
        if candidate.is_file():
            return str(candidate)
    return None


def _font(size: float | None = None) -> FontProperties:
    """Font for text that may contain Japanese; falls back to matplotlib's default family."""
    path = _japanese_font_file()
    if path is None:
        return FontProperties(size=size)
    return FontProperties(fname=path, size=size)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Render ``fig`` in memory, then write it atomically (a reader never sees a half-written
    image, and a crash leaves the previous plot intact)."""
    from kitae.runs import write_bytes_atomic

    target = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=target.suffix.lstrip(".").lower() or "png", dpi=150, bbox_inches="tight")
    write_bytes_atomic(target, buffer.getvalue())


def plot_confusion_matrix(
    cm: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
    normalize: bool = False,
) -> None:
    """Draw a confusion matrix as an annotated heatmap and write it to ``path``.

    Rows are true classes, columns predicted classes (as returned by
    :func:`kitae.metrics.confusion_matrix`). Cell colour is the row-normalised rate (recall
    along the diagonal), so classes of different sizes are comparable; cells show counts, or
    row-normalised rates when ``normalize`` is true. The file is written atomically and its
    format follows the suffix of ``path`` (PNG when there is none).

    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "cm.png")
    >>> plot_confusion_matrix(np.array([[5, 1], [2, 7]]), ["スポーツ", "政治"], out)
    >>> os.path.getsize(out) > 0
    True
    """
    cm = np.asarray(cm)
    n = len(label_names)
    if cm.shape != (n, n):
        raise ValueError(f"cm has shape {cm.shape}, expected ({n}, {n}) for {n} label names")

    row_sums = cm.sum(axis=1, keepdims=True).astype(np.float64)
    rates = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums != 0)

    # Grow the canvas with the class count so cells and labels stay legible up to ~20 classes.
    side = min(max(4.0, 0.55 * n + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("行ごとの割合 / row rate", fontproperties=_font(9))

    tick_size = 10 if n <= 10 else 8
    longest = max((len(name) for name in label_names), default=0)
    rotate = n > 6 or longest * n > 40
    ax.set_xticks(
        range(n),
        labels=list(label_names),
        fontproperties=_font(tick_size),
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(n), labels=list(label_names), fontproperties=_font(tick_size))
    ax.set_xlabel("予測 / predicted", fontproperties=_font(11))
    ax.set_ylabel("正解 / true", fontproperties=_font(11))
    if title:
        ax.set_title(title, fontproperties=_font(12))

    cell_size = 10 if n <= 8 else (8 if n <= 14 else 6)
    for i in range(n):
        for j in range(n):
            text = f"{rates[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            # White text on dark cells, dark text on light ones.
            colour = "white" if rates[i, j] > 0.5 else "#222222"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=cell_size)

    save_figure(fig, path)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for ``key``, skipping rows where it is missing or None."""
    xs: list[float] = []
    ys: list[float] = []
    for index, row in enumerate(history):
        value = row.get(key)
        if value is None:
            continue
        epoch = row.get("epoch")
        xs.append(float(index + 1 if epoch is None else epoch))
        ys.append(float(value))
    return xs, ys


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    metrics: Sequence[str],
) -> None:
    """Plot losses (left axis) and dev metrics (right axis) per epoch and write to ``path``.

    ``history`` rows are dicts such as ``{"epoch": 1, "train_loss": 0.9, "dev_loss": 0.8,
    "dev_macro_f1": 0.6}``; ``train_loss`` and ``dev_loss`` go on the left axis and each key
    in ``metrics`` on the right. Missing keys and None values are skipped; a row without
    ``epoch`` is placed at its 1-based position. The file is written atomically.

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "history.png")
    >>> rows = [{"epoch": 1, "train_loss": 0.9, "dev_loss": 0.8, "dev_macro_f1": 0.6},
    ...         {"epoch": 2, "train_loss": 0.5, "dev_loss": 0.6, "dev_macro_f1": 0.7}]
    >>> plot_history(rows, out, ["dev_macro_f1"])
    >>> os.path.getsize(out) > 0
    True
    """
    fig = Figure(figsize=(8.0, 4.8))
    ax_loss = fig.subplots()
    ax_loss.set_xlabel("エポック / epoch", fontproperties=_font(11))
    ax_loss.set_ylabel("損失 / loss", fontproperties=_font(11))
    ax_loss.grid(True, alpha=0.3)

    handles = []
    all_x: list[float] = []
    for key, colour in (("train_loss", "C0"), ("dev_loss", "C1")):
        xs, ys = _series(history, key)
        if xs:
            (line,) = ax_loss.plot(xs, ys, marker="o", color=colour, label=key)
            handles.append(line)
            all_x.extend(xs)

    if metrics:
        ax_metric = ax_loss.twinx()
        ax_metric.set_ylabel("指標 / metric", fontproperties=_font(11))
        for k, key in enumerate(metrics):
            xs, ys = _series(history, key)
            if xs:
                (line,) = ax_metric.plot(
                    xs, ys, marker="s", linestyle="--", color=f"C{k + 2}", label=key
                )
                handles.append(line)
                all_x.extend(xs)

    if all_x and all(math.isfinite(x) and x == int(x) for x in all_x):
        ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    if handles:
        # Below the plot: inside it, the right-axis lines would be drawn over the legend.
        ax_loss.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncols=min(len(handles), 4),
            frameon=False,
            prop=_font(9),
        )
    else:
        ax_loss.text(
            0.5,
            0.5,
            "データなし / no data",
            ha="center",
            va="center",
            transform=ax_loss.transAxes,
            fontproperties=_font(11),
        )

    save_figure(fig, path)


def plot_multilabel_confusion_grid(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Draw one small 2x2 confusion matrix per category in a grid and write it to ``path``.

    ``y_true`` and ``y_pred`` are 0/1 indicator arrays of shape ``(n, k)``. In each panel rows
    are true no/yes and columns predicted no/yes (:func:`kitae.metrics.multilabel_confusion_
    matrix`); cells show the count and the row rate, which also sets the cell colour, and the
    panel title gives the category name and its F1. The file is written atomically and its
    format follows the suffix of ``path`` (PNG when there is none).

    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> y_true = np.array([[1, 0], [0, 1], [1, 1]])
    >>> plot_multilabel_confusion_grid(y_true, np.array([[1, 0], [1, 1], [0, 1]]),
    ...                                ["猥褻", "差別"], out)
    >>> os.path.getsize(out) > 0
    True
    """
    cms = multilabel_confusion_matrix(y_true, y_pred)
    names = list(label_names)
    k = cms.shape[0]
    if len(names) != k:
        raise ValueError(f"got {len(names)} label names for {k} categories")
    if k == 0:
        raise ValueError("nothing to plot: y_true has no categories")

    ncols = min(k, 4)
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(2.7 * ncols + 0.3, 2.7 * nrows + (0.5 if title else 0.2)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    ticks = ["なし / no", "あり / yes"]
    for j, ax in enumerate(axes.flat):
        if j >= k:
            ax.set_axis_off()
            continue
        cm = cms[j]
        row_sums = cm.sum(axis=1, keepdims=True).astype(np.float64)
        rates = np.divide(
            cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums != 0
        )
        tp, fp, fn = int(cm[1, 1]), int(cm[0, 1]), int(cm[1, 0])
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{names[j]}  F1 {f1:.3f}", fontproperties=_font(10))
        ax.set_xticks(range(2), labels=ticks, fontproperties=_font(8))
        ax.set_yticks(range(2), labels=ticks, fontproperties=_font(8))
        # Axis titles only on the outer panels: repeated on every panel they crowd the grid.
        if j + ncols >= k:
            ax.set_xlabel("予測 / predicted", fontproperties=_font(9))
        if j % ncols == 0:
            ax.set_ylabel("正解 / true", fontproperties=_font(9))
        for r in range(2):
            for c in range(2):
                # White text on dark cells, dark text on light ones.
                colour = "white" if rates[r, c] > 0.5 else "#222222"
                ax.text(
                    c,
                    r,
                    f"{int(cm[r, c])}\n({rates[r, c]:.2f})",
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=9,
                )
    if title:
        fig.suptitle(title, fontproperties=_font(12))
    fig.tight_layout()

    save_figure(fig, path)


def plot_label_rates(rates: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str],
                     title: str = "") -> None:
    """Grouped horizontal bars: the positive rate of every label in every split.

    ``rates`` maps split name -> {label: rate}.
    """
    splits = list(rates)
    labels = list(next(iter(rates.values()))) if rates else []
    fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(labels) * max(1, len(splits)) ** 0.5))
    ax = fig.add_subplot()
    height = 0.8 / max(len(splits), 1)
    for s, split in enumerate(splits):
        values = [rates[split].get(label, 0.0) for label in labels]
        positions = np.arange(len(labels)) + s * height
        bars = ax.barh(positions, values, height=height, label=split)
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.1%}", va="center",
                    fontproperties=_font(8))
    ax.set_yticks(np.arange(len(labels)) + height * (len(splits) - 1) / 2)
    ax.set_yticklabels(labels, fontproperties=_font(9))
    ax.invert_yaxis()
    ax.set_xlabel("割合 / rate", fontproperties=_font())
    ax.set_xlim(0, min(1.0, max((max(r.values(), default=0) for r in rates.values()), default=0) * 1.25 + 0.02))
    ax.legend(prop=_font(8), loc="lower right")
    if title:
        ax.set_title(title, fontproperties=_font(11))
    fig.tight_layout()
    save_figure(fig, path)


def plot_length_histogram(lengths: Mapping[str, Sequence[int]], max_length: int | None,
                          path: str | os.PathLike[str], unit: str = "tokens") -> None:
    """Histogram of text lengths per split, with the truncation limit marked."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    everything = [n for values in lengths.values() for n in values]
    top = max(everything, default=1)
    bins = np.linspace(0, top, 41)
    for split, values in lengths.items():
        ax.hist(values, bins=bins, alpha=0.5, label=f"{split} (n={len(values)})")
    if max_length is not None:
        ax.axvline(max_length, color="black", linestyle="--", linewidth=1)
        ax.text(max_length, ax.get_ylim()[1] * 0.95, f" max_length={max_length}", fontproperties=_font(8))
    ax.set_xlabel(f"長さ / length ({unit})", fontproperties=_font())
    ax.set_ylabel("件数 / count", fontproperties=_font())
    ax.legend(prop=_font(8))
    fig.tight_layout()
    save_figure(fig, path)


def plot_cooccurrence(matrix: np.ndarray, label_names: Sequence[str], path: str | os.PathLike[str],
                      title: str = "") -> None:
    """Heatmap of category co-occurrence counts (diagonal: positives of each category)."""
    k = len(label_names)
    fig = Figure(figsize=(2.5 + 0.7 * k, 2 + 0.6 * k))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Purples")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for i in range(k):
        for j in range(k):
            dark = matrix[i, j] > matrix.max() / 2
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(label_names, fontproperties=_font(8), rotation=45, ha="right")
    ax.set_yticklabels(label_names, fontproperties=_font(8))
    if title:
        ax.set_title(title, fontproperties=_font(10))
    fig.tight_layout()
    save_figure(fig, path)


def plot_regression_scatter(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str],
                            path: str | os.PathLike[str], title: str = "") -> None:
    """Predicted against gold, one panel per target, with the y = x line."""
    k = len(names)
    fig = Figure(figsize=(4.2 * k, 4.2))
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, k, j + 1)
        gold, predicted = y_true[:, j], y_pred[:, j]
        ax.scatter(gold, predicted, s=8, alpha=0.5)
        low, high = float(min(gold.min(), predicted.min())), float(max(gold.max(), predicted.max()))
        ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--")
        ax.set_xlabel(f"正解 / gold ({name})", fontproperties=_font(9))
        ax.set_ylabel("予測 / predicted", fontproperties=_font(9))
    if title:
        fig.suptitle(title, fontproperties=_font(11))
    fig.tight_layout()
    save_figure(fig, path)

"""Figures for reports: the critical-difference diagram, metric vs inner steps, meta-training curves.

Every function builds a ``matplotlib.figure.Figure`` directly (no ``pyplot``): nothing global is
touched, no backend is selected and no style is changed, so importing this module inside another
program is harmless. :func:`save_figure` writes SVG and PNG through the Agg/SVG canvases, and
:func:`svg_markup` returns an ``<svg>`` element to inline in HTML. Output is deterministic: SVG
ids are salted with a fixed string and no date is written.

Text in the figures (method and dataset names) comes from users; matplotlib's SVG writer escapes
it (and by default draws it as paths), so the inline SVG is safe to place in an HTML page.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["cd_diagram", "learning_curves_figure", "prequential_figure", "save_figure", "steps_figure", "svg_markup", "svg_text"]

_RC = {"svg.hashsalt": "metabench", "font.size": 9.0}
_MAX_LABEL = 56  # characters of a name shown in a figure; longer names lose their middle to an ellipsis


def cd_diagram(
    average_ranks: Mapping[str, float],
    cd: float | None,
    *,
    groups: Sequence[Sequence[str]] = (),
    title: str | None = None,
) -> Figure:
    """A critical-difference diagram in the style of Demšar (2006, Fig. 1).

    An axis of average rank (1 = best, on the left) with a tick per integer rank; each method hangs
    from its average rank by a line to its name (the better half on the left, the rest on the
    right); a bar of length ``cd`` above the axis; and a thick line under the axis joining each
    group of methods that are not significantly different.

    Args:
        average_ranks: method name -> average rank in ``[1, k]`` (e.g. ``AcrossSettings.average_ranks``).
        cd: the critical difference in rank units (:func:`metabench.harness.analysis.stats.nemenyi_cd`);
            ``None`` draws no CD bar.
        groups: groups of names to join (:func:`metabench.harness.analysis.stats.nemenyi_groups`).
        title: drawn above the diagram.

    Returns:
        The figure, about 1 inch tall plus 0.22 inch per method on the taller side.

    Raises:
        ValueError: fewer than 2 methods, or a rank that is not finite.
    """
    names, ranks = _cd_diagram_iv(average_ranks, cd)
    k = len(names)
    order = np.argsort(ranks, kind="stable")
    names, ranks = [names[i] for i in order], ranks[order]
    labels = [f"{_short(name)} ({rank:.2f})" for name, rank in zip(names, ranks)]
    left_count = (k + 1) // 2
    lowest, highest = 1, max(k, math.ceil(ranks.max()))
    axis_inches = max(3.0, 0.55 * (highest - lowest))
    label_inches = 0.3 + 0.068 * max(len(label) for label in labels)
    per_inch = (highest - lowest) / axis_inches  # rank units per inch
    pad = label_inches * per_inch
    rows = max(left_count, k - left_count)
    line_gap, group_gap = 0.22, 0.1
    group_top = 0.18
    first_label = group_top + group_gap * max(len(groups), 0) + 0.2
    bottom = first_label + line_gap * (rows - 1) + 0.15
    top = -0.9 if cd else -0.35  # above the tick labels (and the CD bar)
    view_top = top - (0.35 if title else 0.0)
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(axis_inches + 2 * label_inches, bottom - view_top))
        ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_xlim(lowest - pad, highest + pad)
        ax.set_ylim(bottom, view_top)  # inches, downwards
        ax.axis("off")
        ax.plot([lowest, highest], [0, 0], color="black", linewidth=1.0)
        for tick in range(lowest, highest + 1):
            ax.plot([tick, tick], [0, -0.07], color="black", linewidth=1.0)
            ax.text(tick, -0.1, str(tick), ha="center", va="bottom", fontsize=8)
        for half in np.arange(lowest + 0.5, highest, 1.0):
            ax.plot([half, half], [0, -0.035], color="black", linewidth=0.6)
        if cd:
            y = -0.55
            ax.plot([lowest, lowest + cd], [y, y], color="black", linewidth=1.2)
            for end in (lowest, lowest + cd):
                ax.plot([end, end], [y - 0.04, y + 0.04], color="black", linewidth=1.2)
            ax.text(lowest + cd / 2, y - 0.06, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
        for g, group in enumerate(groups):
            members = [ranks[names.index(str(m))] for m in group if str(m) in names]
            if len(members) >= 2:
                y = group_top + group_gap * g
                ax.plot([min(members) - 0.03, max(members) + 0.03], [y, y], color="black", linewidth=2.5,
                        solid_capstyle="round")  # fmt: skip
        for i, (label, rank) in enumerate(zip(labels, ranks)):
            if i < left_count:
                y = first_label + line_gap * i
                end = lowest - 0.1 * per_inch
                ax.plot([rank, rank, end], [0, y, y], color="0.25", linewidth=0.8)
                ax.text(end - 0.04 * per_inch, y, label, ha="right", va="center")
            else:
                y = first_label + line_gap * (k - 1 - i)
                end = highest + 0.1 * per_inch
                ax.plot([rank, rank, end], [0, y, y], color="0.25", linewidth=0.8)
                ax.text(end + 0.04 * per_inch, y, label, ha="left", va="center")
        if title:
            ax.text((lowest + highest) / 2, top - 0.08, _short(title, 90), ha="center", va="bottom", fontsize=10)
    return figure


def _cd_diagram_iv(average_ranks, cd) -> tuple[list[str], np.ndarray]:
    """Validate :func:`cd_diagram`'s inputs."""
    if not hasattr(average_ranks, "items") or len(average_ranks) < 2:
        raise ValueError(
            "cd_diagram: expected a mapping of at least 2 method names to average ranks; received "
            f"{type(average_ranks).__name__} of length {len(average_ranks) if hasattr(average_ranks, '__len__') else '?'}."
        )
    items = list(average_ranks.items())  # a dict or a pandas Series
    ranks = np.asarray([value for _, value in items], dtype=np.float64)
    if not np.isfinite(ranks).all():
        raise ValueError(f"cd_diagram: average ranks must be finite; received {ranks.tolist()}.")
    if cd is not None and not (math.isfinite(cd) and cd > 0):
        raise ValueError(f"cd_diagram: received cd={cd!r}; expected a positive finite number or None.")
    return [str(name) for name, _ in items], ranks


def steps_figure(steps: pd.DataFrame, *, metric: str, title: str | None = None) -> Figure:
    """The evaluation metric against the number of inner (adaptation) steps, one line per label
    (a leaderboard row: one recipe on one episode set).

    Args:
        steps: one row per (label, inner step count) with columns ``label`` (the line's name),
            ``inner_steps`` (int), ``mean`` and ``ci95`` (half width) in the metric's unit
            (accuracy as a fraction; it is drawn in percent).
        metric: ``"accuracy"`` or ``"mse"`` (any other name is drawn as is).
        title: drawn above the plot.

    Returns:
        A 6 x 3.6 inch figure; the shaded band is each mean's 95% CI.

    Raises:
        ValueError: a required column is missing.
    """
    missing = {"label", "inner_steps", "mean", "ci95"} - set(steps.columns)
    if missing:
        raise ValueError(f"steps_figure: the frame lacks column(s) {sorted(missing)}; expected label, inner_steps, mean, ci95.")
    scale = 100.0 if metric == "accuracy" else 1.0
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(6.0, 3.6))
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)  # fixed: cheaper than a layout engine
        ax = figure.add_subplot()
        for label, rows in steps.groupby("label", sort=False):
            rows = rows.sort_values("inner_steps")
            x = rows["inner_steps"].to_numpy()
            mean = rows["mean"].to_numpy(dtype=float) * scale
            half = rows["ci95"].to_numpy(dtype=float) * scale
            (line,) = ax.plot(x, mean, marker="o", markersize=3.5, label=_short(str(label)))
            if len(x) == 1:  # one inner-step count: a band of no width would hide the CI, so draw it as a bar
                ax.errorbar(x, mean, yerr=half, color=line.get_color(), capsize=3, elinewidth=1.0, linewidth=0)
            else:
                ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_xlabel("inner steps at evaluation")
        ax.set_ylabel("accuracy (%)" if metric == "accuracy" else metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8, loc="best")
        if title:
            ax.set_title(_short(title, 90), fontsize=10)
    return figure


def prequential_figure(curve: pd.DataFrame, *, metric: str, title: str | None = None) -> Figure:
    """Prequential evaluation: the query metric against the support examples seen, one line per label,
    each legend entry with the label's online metric (every scored arrival predicted before its label).

    Args:
        curve: rows of :func:`metabench.harness.analysis.leaderboard.prequential_table` for one setting:
            columns ``label``, ``seen`` (int), ``mean`` and ``ci95`` (the query metric after ``seen``
            arrivals), ``online_mean`` and ``online_ci95``, in the metric's unit (accuracy as a fraction).
        metric: ``"accuracy"`` (drawn in percent) or ``"mse"``.
        title: drawn above the plot.

    Returns:
        A 6 x 3.6 inch figure; the shaded band is each mean's 95% CI over episodes.

    Raises:
        ValueError: a required column is missing.
    """
    missing = {"label", "seen", "mean", "ci95", "online_mean", "online_ci95"} - set(curve.columns)
    if missing:
        raise ValueError(f"prequential_figure: the frame lacks column(s) {sorted(missing)}; expected label, seen, mean, ci95, "
                         "online_mean, online_ci95.")
    scale = 100.0 if metric == "accuracy" else 1.0
    unit = "%" if metric == "accuracy" else ""
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(6.0, 3.6))
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
        ax = figure.add_subplot()
        for label, rows in curve.groupby("label", sort=False):
            rows = rows.sort_values("seen")
            x = rows["seen"].to_numpy()
            mean = rows["mean"].to_numpy(dtype=float) * scale
            half = rows["ci95"].to_numpy(dtype=float) * scale
            online, online_half = float(rows["online_mean"].iloc[0]) * scale, float(rows["online_ci95"].iloc[0]) * scale
            name = f"{_short(str(label), _MAX_LABEL - 22)} (online {online:.4g}{unit} ± {online_half:.2g})"
            (line,) = ax.plot(x, mean, marker="o", markersize=3.5, label=name)
            if len(x) == 1:
                ax.errorbar(x, mean, yerr=half, color=line.get_color(), capsize=3, elinewidth=1.0, linewidth=0)
            else:
                ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_xlabel("support examples seen (arrivals)")
        ax.set_ylabel(("query accuracy (%)" if metric == "accuracy" else f"query {metric}"))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, color="0.9")
        ax.legend(fontsize=8, loc="best")
        if title:
            ax.set_title(_short(title, 90), fontsize=10)
    return figure


def learning_curves_figure(curves: pd.DataFrame, *, title: str | None = None, metric_name: str = "metric") -> Figure:
    """Meta-training curves: outer loss and training metric against meta-iteration, one line per run.

    Runs with the same ``label`` (e.g. the seeds of one algorithm) share a colour and one legend
    entry, so the figure stays readable with many runs.

    Args:
        curves: rows shaped like :meth:`ResultsStore.training_curves` with at least ``run_id``,
            ``label`` (the legend entry), ``iteration``, ``loss`` and ``metric``.
        title: drawn above the two panels.
        metric_name: y label of the right panel.

    Returns:
        A 9 x 3.4 inch figure with two panels (loss, metric).

    Raises:
        ValueError: a required column is missing.
    """
    missing = {"run_id", "label", "iteration", "loss", "metric"} - set(curves.columns)
    if missing:
        raise ValueError(
            f"learning_curves_figure: the frame lacks column(s) {sorted(missing)}; expected run_id, label, "
            "iteration, loss, metric."
        )
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(9.0, 3.4))
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
        loss_ax, metric_ax = figure.subplots(1, 2)
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        for n, (label, runs) in enumerate(curves.groupby("label", sort=False)):
            colour = colours[n % len(colours)]
            for i, (_, rows) in enumerate(runs.groupby("run_id", sort=False)):
                rows = rows.sort_values("iteration")
                legend = f"{_short(str(label))} ({runs['run_id'].nunique()} run(s))" if i == 0 else None
                style = {"marker": "o", "markersize": 4} if len(rows) == 1 else {}  # a line from one point is invisible
                loss_ax.plot(rows["iteration"], rows["loss"], linewidth=1.0, alpha=0.85, color=colour, label=legend, **style)
                metric_ax.plot(rows["iteration"], rows["metric"], linewidth=1.0, alpha=0.85, color=colour, **style)
        loss = curves["loss"].to_numpy(dtype=float)
        loss = loss[np.isfinite(loss)]
        if loss.size and loss.min() > 0 and loss.max() / loss.min() > 100:
            loss_ax.set_yscale("log")
        for ax, ylabel in ((loss_ax, "meta-training loss"), (metric_ax, metric_name)):
            ax.set_xlabel("meta-iteration")
            ax.set_ylabel(ylabel)
            ax.grid(True, color="0.9")
        loss_ax.legend(fontsize=7, loc="best")
        if title:
            figure.suptitle(_short(title, 90), fontsize=10)
    return figure


def save_figure(
    figure: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("svg", "png"), *, svg: str | None = None
) -> list[Path]:
    """Write ``figure`` as ``stem.svg`` and ``stem.png`` (or ``formats``); the folder is created.

    Args:
        figure: the figure.
        stem: path without the extension.
        formats: extensions matplotlib can write (PNG at 150 dpi).
        svg: the figure's SVG text, when already rendered (:func:`svg_text`), to skip a render.

    Returns:
        The written paths, in ``formats`` order.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "svg" and svg is not None:
            path.write_text(svg, encoding="utf-8")
        else:
            with matplotlib.rc_context(_RC):
                figure.savefig(path, format=fmt, dpi=150, metadata=_metadata(fmt))
        paths.append(path)
    return paths


def svg_text(figure: Figure) -> str:
    """The figure as a standalone SVG document (what :func:`save_figure` writes to ``.svg``)."""
    buffer = io.StringIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(buffer, format="svg", metadata=_metadata("svg"))
    return buffer.getvalue()


def svg_markup(figure: Figure | str) -> str:
    """One ``<svg ...>...</svg>`` element (no XML declaration) for inline HTML.

    Args:
        figure: a figure, or SVG text from :func:`svg_text`.
    """
    text = figure if isinstance(figure, str) else svg_text(figure)
    return text[text.index("<svg") :].strip()


def _metadata(fmt: str) -> dict:
    if fmt == "svg":
        return {"Date": None, "Creator": "metabench"}
    if fmt == "png":
        return {"Software": "metabench"}
    return {}


def _short(text: str, limit: int = _MAX_LABEL) -> str:
    """``text`` on one line, at most ``limit`` characters: a longer one keeps its start and its end
    (a recipe label's algorithm and its distinguishing tail, e.g. a fingerprint tag)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = (limit - 1) * 3 // 5
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]

"""Figures: CD diagram, metric vs inner steps, learning curves; SVG/PNG output, inline SVG, no global state."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from metabench.harness.analysis import figures
from metabench.harness.analysis.stats import nemenyi_cd, nemenyi_groups

RANKS = {"maml": 1.4, "mamlpp": 1.6, "baseline": 3.2, "baseline++": 3.8, "pretrain": 4.5, "multitask": 5.5}


def test_cd_diagram_writes_svg_and_png(tmp_path):
    cd = nemenyi_cd(6, 8)
    figure = figures.cd_diagram(RANKS, cd, groups=nemenyi_groups(RANKS, cd), title="ranks")
    assert isinstance(figure, Figure)
    paths = figures.save_figure(figure, tmp_path / "sub" / "cd")
    assert [p.name for p in paths] == ["cd.svg", "cd.png"]
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    svg = paths[0].read_text()
    assert "<svg" in svg and "Date" not in svg  # no timestamp: deterministic output


def test_drawing_changes_no_global_matplotlib_state(tmp_path):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    figures.save_figure(figures.cd_diagram(RANKS, 1.0), tmp_path / "cd")
    figures.svg_markup(figures.cd_diagram({"a": 1.0, "b": 2.0}, None))
    after = dict(matplotlib.rcParams)
    assert after == before and matplotlib.get_backend() == backend


def test_svg_markup_is_one_svg_element_with_user_text_escaped():
    figure = figures.cd_diagram({"<script>alert(1)</script>": 1.0, "a & b": 2.0}, 0.8)
    markup = figures.svg_markup(figure)
    assert markup.startswith("<svg") and markup.endswith("</svg>")
    assert "<?xml" not in markup
    assert "<script" not in markup.lower()


def test_svg_output_is_deterministic():
    one = figures.svg_markup(figures.cd_diagram(RANKS, 1.2))
    two = figures.svg_markup(figures.cd_diagram(RANKS, 1.2))
    assert one == two


@pytest.mark.parametrize(
    ("ranks", "cd", "message"),
    [({"a": 1.0}, 1.0, r"at least 2 method names"), ({"a": 1.0, "b": np.nan}, 1.0, r"average ranks must be finite"),
     ({"a": 1.0, "b": 2.0}, -1.0, r"received cd=-1.0; expected a positive finite number or None")],
)  # fmt: skip
def test_cd_diagram_rejects_bad_input(ranks, cd, message):
    with pytest.raises(ValueError, match=message):
        figures.cd_diagram(ranks, cd)


def test_steps_and_learning_curve_figures(tmp_path):
    steps = pd.DataFrame({"label": ["maml"] * 3 + ["pretrain"] * 3, "inner_steps": [0, 1, 5] * 2,
                          "mean": [0.2, 0.8, 0.9, 0.2, 0.4, 0.5], "ci95": [0.01] * 6})  # fmt: skip
    paths = figures.save_figure(figures.steps_figure(steps, metric="accuracy", title="omniglot"), tmp_path / "steps")
    assert all(p.stat().st_size > 0 for p in paths)
    curves = pd.DataFrame({"run_id": ["r1"] * 4 + ["r2"] * 4, "label": ["maml"] * 8, "iteration": [1, 2, 3, 4] * 2,
                           "loss": [2.0, 1.0, 0.5, 0.4, 2.1, 1.1, 0.6, 0.5], "metric": np.linspace(0.2, 0.9, 8)})  # fmt: skip
    figure = figures.learning_curves_figure(curves, title="omniglot")
    assert len(figure.axes) == 2
    figures.save_figure(figure, tmp_path / "curves", formats=("svg",))
    assert (tmp_path / "curves.svg").is_file()


def test_figure_frames_need_their_columns():
    with pytest.raises(ValueError, match=r"steps_figure: the frame lacks column\(s\) \['ci95'\]"):
        figures.steps_figure(pd.DataFrame({"label": [], "inner_steps": [], "mean": []}), metric="mse")
    with pytest.raises(ValueError, match=r"learning_curves_figure: the frame lacks column\(s\) \['run_id'\]"):
        figures.learning_curves_figure(pd.DataFrame({"label": [], "iteration": [], "loss": [], "metric": []}))


def test_long_recipe_labels_keep_their_start_and_end_in_the_legend():
    first = "maml (eval_inner_lr=0.3, first_order=true, inner_lr=0.2, +2) [a1a1a1a1]"
    second = first.replace("[a1a1a1a1]", "[b2b2b2b2]")
    steps = pd.DataFrame({"label": [first] * 2 + [second] * 2, "inner_steps": [0, 1] * 2,
                          "mean": [0.2, 0.8, 0.2, 0.7], "ci95": [0.01] * 4})  # fmt: skip
    legend = [t.get_text() for t in figures.steps_figure(steps, metric="accuracy").axes[0].get_legend().get_texts()]
    assert len(set(legend)) == 2
    assert all(text.startswith("maml (eval_inner_lr=0.3") and "\u2026" in text for text in legend)
    assert legend[0].endswith("[a1a1a1a1]") and legend[1].endswith("[b2b2b2b2]")

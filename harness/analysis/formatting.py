"""The words and numbers of a report, shared by every format: how values, p-values, marks and the
rows of the comparison tables read, before the markdown, LaTeX or HTML writer escapes them."""

from __future__ import annotations

import math

from metabench.harness.analysis.leaderboard import Report
from metabench.harness.analysis.stats import AcrossSettings

CI_CONVENTION = (
    "ci95 = 1.96 · s / √n over the n evaluation episodes, s = standard deviation with ddof=0 "
    "(np.std; the few-shot convention of the MAML and Closer-Look code). It measures "
    "episode-sampling noise only, not training-seed variance."
)

ROW_TEXT = (
    "Each row is one recipe (the resolved config without its training seed; its hash is the recipe "
    "column) on one evaluation episode set (fingerprint) at the evaluation's headline inner-step count; "
    "accuracy is in percent, MSE in the task's units. The label is the algorithm plus the recipe keys that "
    "set the row apart from the other recipes of that algorithm in the setting, or the config's label. "
    "Runs pool only within a recipe, as its training seeds: each seed's per-episode values first "
    "(repeated runs of a seed count once; repeats that differ are a determinism failure, noted in the "
    "row), then each episode's value is averaged across the seeds (same fingerprint = same episodes), "
    "then the mean and CI are taken over the episodes."
)
"""How to read a leaderboard row (markdown and HTML)."""


def format_value(value: float, metric: str) -> str:
    """Accuracy fraction as percent with 2 decimals, anything else with 4 significant digits."""
    return f"{100.0 * value:.2f}" if metric == "accuracy" else f"{value:#.4g}"


def format_p(p: float) -> str:
    """A p-value for a table: ``"<0.001"``, 2 significant digits, or ``"-"`` when not computed."""
    if p is None or not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """``"p < 0.001"`` or ``"p = 0.43"`` for prose and table cells."""
    text = format_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def vs_best_text(row: dict) -> str:
    """The short text of a row's ``vs_best`` mark, with its p-value."""
    mark, p = row["vs_best"], row["p_vs_best_holm"]
    if mark == "not significantly different":
        return f"≈ best ({p_text(p)})"
    if mark == "significantly worse":
        return f"worse ({p_text(p)})"
    if mark == "too few episodes to test":
        return "≈ best (too few episodes to test)"
    if mark == "not ranked: non-finite values":
        return "-"
    return mark


def significance_text(alpha: float) -> str:
    """The paragraph that explains ``vs best`` and the paired comparisons."""
    return (
        f"**vs best**: each row against the setting's best one on the same episodes (same "
        f"fingerprint): Wilcoxon signed-rank test on the per-episode differences (zero differences "
        f"split between the signs, Demšar 2006), Holm-corrected over all pairs of the setting, "
        f"alpha = {alpha:g}. \"≈ best\" = not significantly different from the best. Results on different "
        "episode sets are never paired, and a pair at different inner-step counts says so in its row. "
        "**ci95 (t)** is the Student-t interval (ddof 1); **seed std** the standard deviation (ddof 1) "
        "of the per-seed means, i.e. training-seed variability."
    )


PAIR_HEADERS = [
    "A", "B", "inner steps", "episodes", "A − B", "95% CI of A − B", "d_z", "Wilcoxon p (Holm)", "t p (Holm)", "result",
]  # fmt: skip
"""Headers of :func:`pair_cells`."""


def steps_cell(pair: dict) -> str:
    """``"3"`` when both rows of a pair report the same inner-step count, else ``"1 vs 10"``."""
    a, b = pair["inner_steps_a"], pair["inner_steps_b"]
    return str(a) if a == b else f"{a} vs {b}"


def pair_cells(pair: dict, alpha: float) -> list[str]:
    """Display cells of one within-setting pair (plain text; escape for the target format)."""
    metric = pair["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit_format = "{:+.2f}" if metric == "accuracy" else "{:+.4g}"
    tested = math.isfinite(pair["wilcoxon_p"]) or math.isfinite(pair["t_p"])
    if pair["note"].startswith("not paired"):
        return [pair["a"], pair["b"], steps_cell(pair), "-", "-", "-", "-", "-", "-", pair["note"]]
    difference = unit_format.format(scale * pair["mean_difference"])
    if math.isfinite(pair["diff_low"]):
        interval = f"[{unit_format.format(scale * pair['diff_low'])}, {unit_format.format(scale * pair['diff_high'])}]"
    else:
        interval = "-"
    dz = pair["effect_size_dz"]
    effect = "-" if math.isnan(dz) else ("±inf" if math.isinf(dz) else f"{dz:+.2f}")
    if not tested:
        result = "not tested: " + (pair["note"] or "too few episodes")
    elif pair["significant"]:
        result = f"different at alpha = {alpha:g}"
    else:
        result = "not significantly different"
    if tested and pair["note"]:
        result += f" ({pair['note']})"
    return [
        pair["a"], pair["b"], steps_cell(pair), str(pair["episodes"]), difference, interval, effect,
        f"{format_p(pair['wilcoxon_p'])} ({format_p(pair['wilcoxon_p_holm'])})",
        f"{format_p(pair['t_p'])} ({format_p(pair['t_p_holm'])})", result,
    ]  # fmt: skip


def friedman_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with Friedman's chi-square and the Iman-Davenport F, or why they were not
    computed; never an infinite statistic."""
    f = across.friedman
    if f.not_computed:
        return [f.not_computed]
    lines = [f"Friedman chi-square = {f.statistic:.3f} (df = {f.k - 1}), {p_text(f.pvalue)}"]
    if f.iman_davenport_not_computed:
        lines.append(f"Iman-Davenport F_F: {f.iman_davenport_not_computed}")
    else:
        lines.append(
            f"Iman-Davenport F_F = {f.iman_davenport_F:.3f} (df = {f.k - 1}, {(f.k - 1) * (f.n - 1)}), "
            f"{p_text(f.iman_davenport_pvalue)}"
        )
    return lines


def nemenyi_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with the Nemenyi critical difference and its groups."""
    f = across.friedman
    lines = [
        f"Nemenyi critical difference CD = {across.q_alpha:.3f} · √(k(k+1)/(6N)) = {across.cd:.3f} "
        f"(k = {f.k}, N = {f.n}, alpha = {across.alpha:g})"
    ]
    if across.groups:
        lines.append("Not significantly different by Nemenyi (joined in the diagram): "
                     + "; ".join("{" + ", ".join(g) + "}" for g in across.groups))  # fmt: skip
    else:
        lines.append("Nemenyi: every pair of methods differs by at least CD.")
    return lines


def across_summary_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with the Friedman, Iman-Davenport and Nemenyi numbers (:func:`friedman_lines`
    then :func:`nemenyi_lines`)."""
    return [*friedman_lines(across), *nemenyi_lines(across)]


ACROSS_PAIR_HEADERS = ["A", "B", "rank difference", "Nemenyi", "wins / ties / losses of A", "Wilcoxon p (Holm)", "result"]


def across_pair_cells(pair: dict, alpha: float) -> list[str]:
    """Display cells of one across-settings pair (plain text)."""
    return [
        pair["a"],
        pair["b"],
        f"{pair['rank_difference']:.2f}",
        "different" if pair["nemenyi_significant"] else "-",
        f"{pair['wins']} / {pair['ties']} / {pair['losses']}",
        f"{format_p(pair['wilcoxon_p'])} ({format_p(pair['wilcoxon_p_holm'])})",
        f"different at alpha = {alpha:g}" if pair["wilcoxon_significant"] else "not significantly different",
    ]


def compared_at_lines(report: Report) -> list[str]:
    """What ``--steps N`` changed: the inner-step count every row reports and what was left out."""
    if report.compared_at is None:
        return []
    lines = [
        f"Compared at equal inner steps: every row reports inner step {report.compared_at} "
        f"(metabench report --steps {report.compared_at}), not its evaluation's headline count."
    ]
    if report.left_out:
        lines.append(f"Left out (inner step {report.compared_at} not recorded): " + "; ".join(report.left_out) + ".")
    return lines


def empty_text(report: Report) -> str:
    """What an empty leaderboard says."""
    if report.compared_at is not None and report.left_out:
        return f"No completed run recorded inner step {report.compared_at}; nothing to rank."
    return "No completed runs with evaluations in this store yet; nothing to rank."


ONLINE_MEASURE_TITLES = {  # the online section's title of each online measure
    "online_mse": "online MSE (prequential: each support point predicted before it is used)",
    "online_accuracy": "online accuracy (prequential: each support example predicted before it is used)",
    "stream_mse": "drifting stream, average MSE over the stream",
    "stream_last_mse": "drifting stream, MSE over its last part",
    "stream_retest_mse": "drifting stream, MSE of its first tasks re-tested at the end",
    "stream_forgetting_mse": "drifting stream, forgetting (re-test minus arrival MSE of the first tasks)",
}
ONLINE_TEXT = (
    "Online measures, ranked and paired as the leaderboard is (lower is better for every MSE, forgetting too). "
    "Prequential: the online metric of a setting's episodes, every scored support example predicted before its "
    "label is used. Drifting stream (split `stream`, one row per stream task): each task predicted after adapting "
    "on its support points from the learner's weights of that moment, then learned from (docs/configs.md#drifting-task-stream)."
)
"""What the online-adaptation section of every format says first."""

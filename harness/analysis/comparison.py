"""The decision of the regression gate: one baseline against one candidate on identical episodes.

:func:`compare` pairs two sets of per-episode results (each a
:class:`~metabench.harness.results.baseline_file.Baseline`) and decides with the paired tests of
:mod:`metabench.harness.analysis.stats`; it reads no store and trains nothing
(:func:`metabench.harness.testing.check.check` obtains the candidate, then calls it):

* The unit of every difference is the unit of the tolerance: **percentage points** of accuracy,
  **percent of the baseline's mean MSE** (``100 * (mse_candidate - mse_baseline) / mean(mse_baseline)``),
  or **units of return** (reinforcement learning: the mean return, as is; returns are often negative, so
  a percentage of them would flip sign). ``difference`` is candidate minus baseline in that unit (so for
  MSE a positive difference is worse). Which direction is better comes from
  :func:`metabench.harness.results.records.higher_is_better`: accuracy and return higher, MSE lower.
* ``regressed``: the candidate is worse by more than ``tolerance`` (the mean paired difference) and
  the one-sided paired t-test "candidate worse than baseline" is significant at ``alpha``, its
  p-values Holm-adjusted over the settings compared. ``improved`` symmetrically; otherwise
  ``unchanged``. A candidate with a non-finite metric on an episode where the baseline is finite
  (adaptation diverged) is ``regressed``.
* ``equivalent`` (only when an equivalence margin is given): two one-sided tests (TOST) at
  ``alpha`` in every setting, i.e. the ``1 - 2 alpha`` CI of the mean difference lies inside
  ``(-margin, +margin)`` everywhere.
* The CI reported is that ``1 - 2 alpha`` CI (90% for alpha 0.05), so each decision can be read
  off it: with one setting, ``regressed`` means the mean is beyond the tolerance and the CI
  excludes 0 on the worse side.

Like is compared with like:

* **Seeds.** Both sides hold the same training seeds, one row per seed; else :class:`CheckError`
  names the missing and extra seeds. The decision pairs, episode by episode, the per-seed averages
  over those same seeds; each seed's own mean difference is reported beside it.
* **Repeats.** Repeated runs of one seed count once when they agree bit for bit; when they differ
  that is a determinism failure (:class:`~metabench.harness.results.baseline_file.BaselineError`,
  exit 2), never averaged.
* **Recipes.** A baseline is one recipe (:func:`metabench.harness.config.recipe_hash`: the config
  without the seed and the display-only keys). A candidate of another recipe (e.g. a changed inner
  learning rate) is still compared, since that is what a regression check of a change is, but
  the result says "different recipe" and lists the config keys that differ.

It refuses to compare (:class:`CheckError`, exit status 2) when the episodes differ (fingerprints,
both named in the message), when the settings differ (dataset, split, ways, shots, queries,
metric), when the seeds differ, or when the candidate lacks the inner-step count compared.

Exit status (:attr:`CheckResult.exit_code`): 0 unchanged or improved (and equivalent, when asked),
1 regressed (or not equivalent, when asked), 2 could not compare.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

from metabench.harness.analysis.stats import (
    EquivalenceTest,
    holm,
    paired_comparison,
    paired_one_sided,
    tost_paired,
)
from metabench.harness.errors import MetabenchError
from metabench.harness.results.baseline_file import (
    Baseline,
    SettingResults,
    config_differences,
)
from metabench.harness.results.records import higher_is_better as metric_higher_is_better

logger = logging.getLogger(__name__)

DECISIONS = ("regressed", "improved", "unchanged")
"""What a check can decide about the candidate (see the module docstring)."""

EXIT_OK, EXIT_REGRESSED, EXIT_CANNOT_COMPARE = 0, 1, 2
"""Exit statuses of ``metabench check``."""

DEFAULT_TOLERANCE = 0.5
"""Percentage points of accuracy, percent of the baseline's mean MSE, or units of return."""

UNITS = {"accuracy": "pp", "mse": "% of baseline MSE", "return": "return"}
"""The unit of a difference (and of the tolerance) for each plain metric (see the module docstring)."""

DEFAULT_ALPHA = 0.05


class CheckError(MetabenchError, ValueError):
    """The baseline and the candidate cannot be compared (exit status 2); the message says why and what to do."""


def cannot_compare_errors() -> tuple[type[BaseException], ...]:
    """Every error that means "no answer" (exit status 2): each :class:`MetabenchError` (a
    :class:`CheckError`, a baseline that cannot be read, a candidate config that cannot run, ...)."""
    return (MetabenchError,)


@dataclasses.dataclass(frozen=True)
class SettingCheck:
    """The comparison in one evaluation setting (one episode fingerprint), at one inner-step count.

    Attributes:
        setting: the baseline's results of this setting (its description, fingerprint, metric).
        inner_steps: the inner-step count compared.
        n: number of paired episodes (episodes where the baseline is NaN are left out).
        unit: ``"pp"`` (percentage points of accuracy), ``"% of baseline MSE"`` or ``"return"``
            (units of return); see :data:`UNITS`.
        higher_is_better: True for accuracy and return, False for MSE.
        baseline_mean, candidate_mean: means over the paired episodes, in the metric's own unit
            (accuracy as a fraction, MSE and return as is).
        difference: mean of candidate minus baseline, in ``unit``.
        ci_low, ci_high: the ``ci_level`` Student-t CI of ``difference``.
        ci_level: ``1 - 2 alpha``.
        p_worse, p_better: one-sided paired t-test p-values of "candidate worse" / "candidate better".
        p_worse_holm, p_better_holm: the same, Holm-adjusted over the settings of the check.
        decision: one of :data:`DECISIONS`.
        equivalence: the TOST result when a margin was asked for, else ``None``.
        non_finite: episodes where the candidate's metric is NaN or infinite but the baseline's is not.
        dropped: episodes left out because the baseline's metric is not finite.
        note: why a value is NaN or what decided, else ``""``.
        per_seed: ``(seed, difference)`` per compared seed: that seed's mean paired difference in
            ``unit`` (NaN when it has no paired episodes). For reading only: the decision uses
            the per-seed averages.
    """

    setting: SettingResults
    inner_steps: int
    n: int
    unit: str
    higher_is_better: bool
    baseline_mean: float
    candidate_mean: float
    difference: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_worse: float
    p_better: float
    p_worse_holm: float
    p_better_holm: float
    decision: str
    equivalence: EquivalenceTest | None
    non_finite: int
    dropped: int
    note: str
    per_seed: tuple[tuple[int, float], ...] = ()

    @property
    def gain(self) -> float:
        """``difference`` oriented so that positive is better."""
        return self.difference if self.higher_is_better else -self.difference

    def as_dict(self) -> dict:
        s = self.setting
        payload = {
            "dataset": s.dataset, "split": s.split, "ways": s.ways, "shots": s.shots, "queries": s.queries,
            "fingerprint": s.fingerprint, "metric": s.metric, "inner_steps": self.inner_steps, "n": self.n,
            "decision": self.decision, "unit": self.unit, "higher_is_better": self.higher_is_better,
            "baseline_mean": _num(self.baseline_mean), "candidate_mean": _num(self.candidate_mean),
            "difference": _num(self.difference), "ci_low": _num(self.ci_low), "ci_high": _num(self.ci_high),
            "ci_level": self.ci_level, "p_worse": _num(self.p_worse), "p_better": _num(self.p_better),
            "p_worse_holm": _num(self.p_worse_holm), "p_better_holm": _num(self.p_better_holm),
            "non_finite": self.non_finite, "dropped": self.dropped, "note": self.note,
            "per_seed": [{"seed": seed, "difference": _num(d)} for seed, d in self.per_seed],
        }  # fmt: skip
        if self.equivalence is not None:
            e = self.equivalence
            payload["equivalence"] = {
                "equivalent": e.equivalent, "margin": e.margin, "p_value": _num(e.pvalue),
                "p_lower": _num(e.pvalue_lower), "p_upper": _num(e.pvalue_upper),
                "ci_low": _num(e.ci_low), "ci_high": _num(e.ci_high), "ci_level": e.confidence,
            }  # fmt: skip
        return payload


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of a check (:func:`compare`): a decision, an exit code, and every number behind them.

    Attributes:
        decision: ``"regressed"``, ``"improved"`` or ``"unchanged"`` (regressed if any setting
            regressed, else improved if any improved).
        equivalence: ``"equivalent"``, ``"not equivalent"``, or ``None`` when no margin was given.
        exit_code: 0, or 1 when regressed or not equivalent.
        settings: one :class:`SettingCheck` per baseline setting.
        deciding: index into ``settings`` of the setting behind the decision (the worst regressed,
            else the first not equivalent, else the best improved, else the worst change).
        tolerance, alpha, margin: the thresholds used (``margin`` ``None`` without equivalence).
        baseline, candidate: the two sides' results (candidate read back from its store).
        candidate_source: how the candidate was obtained, for messages.
        config_differences: ``"key: baseline -> candidate"`` for every config key that differs (the
            seed and the display-only keys aside): empty exactly when the recipes are the same.
        version_differences: ``"library: baseline -> candidate"`` for every library version that differs.
        seeds: the training seeds compared (the baseline's, in its order; the candidate's are the same).
        seeds_compared: what was compared, e.g. ``"compared seeds 0, 1 (re-ran both)"``.
        same_recipe: whether the candidate has the baseline's recipe hash.
    """

    decision: str
    equivalence: str | None
    exit_code: int
    settings: tuple[SettingCheck, ...]
    deciding: int
    tolerance: float
    alpha: float
    margin: float | None
    baseline: Baseline
    candidate: Baseline
    candidate_source: str
    config_differences: tuple[str, ...]
    version_differences: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    seeds_compared: str = ""
    same_recipe: bool = True

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    def as_dict(self) -> dict:
        """What ``metabench check --json`` prints: the decision, the deciding setting's paired mean
        difference with its CI, p-value and n at the top level, and every setting under ``settings``."""
        top = self.settings[self.deciding]
        p_value = top.p_better_holm if top.decision == "improved" else top.p_worse_holm
        payload = {
            "decision": self.decision,
            "equivalence": self.equivalence,
            "exit_code": self.exit_code,
            "n": top.n,
            "difference": _num(top.difference),
            "ci_low": _num(top.ci_low),
            "ci_high": _num(top.ci_high),
            "ci_level": top.ci_level,
            "p_value": _num(p_value),
            "unit": top.unit,
            "metric": top.setting.metric,
            "inner_steps": top.inner_steps,
            "fingerprint": top.setting.fingerprint,
            "tolerance": self.tolerance,
            "alpha": self.alpha,
            "equivalence_margin": self.margin,
            "seeds": list(self.seeds),
            "seeds_compared": self.seeds_compared,
            "same_recipe": self.same_recipe,
            "baseline": _side(self.baseline, self.baseline.source),
            "candidate": _side(self.candidate, self.candidate_source),
            "config_differences": list(self.config_differences),
            "version_differences": list(self.version_differences),
            "settings": [s.as_dict() for s in self.settings],
        }  # fmt: skip
        if top.equivalence is not None:
            payload["equivalence_p_value"] = _num(top.equivalence.pvalue)
        return payload

    def explanation(self) -> str:
        """A few human-readable lines: the verdict, both sides, what changed, and each setting's numbers."""
        verdict = self.decision.upper() + (f", {self.equivalence.upper()}" if self.equivalence else "")
        b, c = self.baseline, self.candidate
        recipe = (
            "the baseline's recipe" if self.same_recipe
            else f"a DIFFERENT recipe from the baseline's {b.recipe_hash[:12]} (see the config changes)"
        )  # fmt: skip
        lines = [
            f"metabench check: {verdict} (exit {self.exit_code})",
            f"  baseline:  {b.source}: {b.algorithm} on {b.dataset}, {_seed_list(b.seeds)}, recipe {b.recipe_hash[:12]}"
            + (", deterministic" if b.deterministic else ", NOT deterministic (engine.deterministic = false)"),
            f"  candidate: {self.candidate_source}",
            f"             {c.algorithm} on {c.dataset}, run(s) {', '.join(c.run_ids)}, recipe {c.recipe_hash[:12]}: {recipe}",
            f"  {self.seeds_compared}",
            "  config changes: " + ("; ".join(self.config_differences) if self.config_differences else "none"),
            "  library changes: " + ("; ".join(self.version_differences) if self.version_differences else "none"),
        ]
        for side, results in (("baseline", b), ("candidate", c)):
            lines += [f"  note: {side} {note}; counted once" for note in results.repeats]
        holm_note = f"Holm over {len(self.settings)} settings, " if len(self.settings) > 1 else ""
        for s in self.settings:
            head = (
                f"  [{s.decision}] {s.setting.describe()}, {s.setting.metric} after {s.inner_steps} inner step(s), "
                f"n = {s.n}, fingerprint {s.setting.fingerprint[:12]}:"
            )
            unit = _unit_suffix(s.unit)
            numbers = (
                f"    baseline {_show(s.baseline_mean, s.setting.metric)}, candidate {_show(s.candidate_mean, s.setting.metric)}: "
                f"difference {_signed(s.difference, unit)} ({100 * s.ci_level:g}% CI "
                f"{_signed(s.ci_low, say_why=False)} to {_signed(s.ci_high, say_why=False)}); "
                f"tolerance {self.tolerance:g}"
            )
            worse = "lower" if s.higher_is_better else "higher"
            test = (
                f"    one-sided paired t-test, candidate worse ({worse} {s.setting.metric}): p = {_p(s.p_worse_holm)}; "
                f"better: p = {_p(s.p_better_holm)} ({holm_note}alpha {self.alpha:g})"
            )
            lines += [head, numbers, test]
            if s.equivalence is not None:
                e = s.equivalence
                lines.append(
                    f"    equivalence within +/-{e.margin:g}: {'yes' if e.equivalent else 'no'} (TOST p = {_p(e.pvalue)}, "
                    f"{100 * e.confidence:g}% CI {_signed(e.ci_low, say_why=False)} to {_signed(e.ci_high, say_why=False)})"
                )
            if len(s.per_seed) > 1:
                mark = "%" if s.unit == UNITS["mse"] else _unit_suffix(s.unit)
                lines.append("    difference per seed: " + ", ".join(f"seed {seed} {_signed(d, mark)}" for seed, d in s.per_seed))
            if s.note:
                lines.append(f"    note: {s.note}")
        if self.exit_code == EXIT_REGRESSED and not self.config_differences and not self.version_differences and b.deterministic:
            lines.append("  Same config and library versions as the baseline: the code under test changed what it computes.")
        return "\n".join(lines)


def compare(
    baseline: Baseline,
    candidate: Baseline,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
    equivalence: float | None = None,
    inner_steps: int | None = None,
    candidate_source: str = "",
    rerun: bool = False,
) -> CheckResult:
    """Pair two sets of per-episode results setting by setting, seed by seed, and decide (no I/O, no training).

    Every setting of ``baseline`` must have a candidate setting with the same fingerprint and
    metric; candidate settings the baseline lacks are ignored. Both sides must hold the same
    seeds; the per-episode values compared are each side's average over those seeds, taken in the
    baseline's seed order. Arguments as for :func:`metabench.harness.testing.check.check`; ``rerun``: the candidate is the
    baseline's config run again at its seeds (only changes the wording of ``seeds_compared``).

    Raises:
        CheckError: a baseline setting has no candidate results on the same episodes (the message
            names both fingerprints), the metrics differ, the seeds differ (the message names the
            missing and extra seeds), or the inner-step count is missing.
    """
    check_thresholds(tolerance, alpha, equivalence, inner_steps)
    pairs = _pair_settings(baseline, candidate)
    rows = _seed_rows(baseline, candidate)
    partial = [_compare_setting(b, c, inner_steps, tolerance, alpha, equivalence, rows, baseline.seeds) for b, c in pairs]
    worse_holm = holm([p["p_worse"] for p in partial])
    better_holm = holm([p["p_better"] for p in partial])
    settings = []
    for p, p_worse_holm, p_better_holm in zip(partial, worse_holm, better_holm):
        gain = p["difference"] if p["higher_is_better"] else -p["difference"]
        if p["non_finite"] or (gain < -tolerance and p_worse_holm <= alpha):
            decision = "regressed"
        elif gain > tolerance and p_better_holm <= alpha:
            decision = "improved"
        else:
            decision = "unchanged"
        settings.append(SettingCheck(**p, p_worse_holm=float(p_worse_holm), p_better_holm=float(p_better_holm), decision=decision))
    decisions = [s.decision for s in settings]
    decision = "regressed" if "regressed" in decisions else "improved" if "improved" in decisions else "unchanged"
    verdict = None
    if equivalence is not None:
        verdict = "equivalent" if all(s.equivalence.equivalent and not s.non_finite for s in settings) else "not equivalent"
    exit_code = EXIT_REGRESSED if decision == "regressed" or verdict == "not equivalent" else EXIT_OK
    return CheckResult(
        decision=decision,
        equivalence=verdict,
        exit_code=exit_code,
        settings=tuple(settings),
        deciding=_deciding(settings, decision, verdict),
        tolerance=float(tolerance),
        alpha=float(alpha),
        margin=None if equivalence is None else float(equivalence),
        baseline=baseline,
        candidate=candidate,
        candidate_source=candidate_source or candidate.source,
        config_differences=tuple(_config_changes(baseline, candidate)),
        version_differences=tuple(_version_differences(baseline.versions, candidate.versions)),
        seeds=tuple(baseline.seeds),
        seeds_compared=_seeds_compared(baseline.seeds, rerun),
        same_recipe=baseline.recipe_hash == candidate.recipe_hash,
    )


def require_same_episodes(baseline: Baseline, candidate_sets: Sequence[tuple[tuple, str]], candidate_config: dict | None = None) -> None:
    """Raise :class:`CheckError` unless every baseline setting has a candidate episode set with its fingerprint.

    Args:
        baseline: the baseline.
        candidate_sets: ``((dataset, split, ways, shots, queries), fingerprint)`` per candidate
            evaluation set (what :func:`metabench.harness.run.prepare.prepare` builds, before training).
        candidate_config: the candidate's resolved config, to name the evaluation keys that differ.
    """
    fingerprints = {fp for _, fp in candidate_sets}
    for setting in baseline.settings:
        if setting.fingerprint in fingerprints:
            continue
        same = [fp for key, fp in candidate_sets if key == setting.key[:5]]
        hint = _evaluation_hint(baseline.config, candidate_config)
        if same:
            raise CheckError(
                f"Episode fingerprints differ for {setting.describe()}: the baseline's is {setting.fingerprint}, the "
                f"candidate's is {same[0]}. The check pairs results episode by episode, so it only compares identical "
                f"episodes.{hint}"
            )
        available = ", ".join(f"{_describe_key(key)} ({fp})" for key, fp in candidate_sets) or "none"
        raise CheckError(
            f"The candidate is not evaluated on the baseline's setting {setting.describe()} (fingerprint "
            f"{setting.fingerprint}); its settings are: {available}.{hint}"
        )


# ---------------------------------------------------------------------------------------------
# pairing and per-setting numbers
# ---------------------------------------------------------------------------------------------


def _pair_settings(baseline: Baseline, candidate: Baseline) -> list[tuple[SettingResults, SettingResults]]:
    sets = [(c.key[:5], c.fingerprint) for c in candidate.settings]
    require_same_episodes(baseline, sets, candidate.config)
    by_fp = {c.fingerprint: c for c in candidate.settings}
    pairs = []
    for b in baseline.settings:
        c = by_fp[b.fingerprint]
        if c.metric != b.metric:
            raise CheckError(
                f"For {b.describe()} (fingerprint {b.fingerprint[:12]}) the baseline recorded {b.metric} but the candidate "
                f"{c.metric}; they measure different things. Compare algorithms with the same objective."
            )
        pairs.append((b, c))
    extra = [c.describe() for c in candidate.settings if c.fingerprint not in {b.fingerprint for b in baseline.settings}]
    if extra:
        logger.info("Candidate settings the baseline does not have, not compared: %s", "; ".join(extra))
    return pairs


def _seed_rows(baseline: Baseline, candidate: Baseline) -> tuple[list[int], list[int]]:
    """Rows of ``values`` to compare on each side: every seed, the candidate's in the baseline's seed order.

    Raises:
        CheckError: the two sides hold different seeds (the message names the missing and extra ones).
    """
    ours, theirs = baseline.seeds, candidate.seeds
    missing = [s for s in ours if s not in theirs]
    extra = [s for s in theirs if s not in ours]
    if missing or extra:
        raise CheckError(
            f"The baseline holds seed(s) {listed_seeds(ours)}, but the candidate run(s) {', '.join(candidate.run_ids)} hold seed(s) "
            f"{listed_seeds(theirs)}: missing seed(s) {listed_seeds(missing)}; extra seed(s) {listed_seeds(extra)}. A check compares the same "
            "seeds on both sides (other seeds would count seed-to-seed variation as a change). Pass one completed run per "
            "baseline seed (--run, repeatable), or check a config (--config), which is run at every seed of the baseline."
        )
    return list(range(len(ours))), [theirs.index(s) for s in ours]


def _compare_setting(b: SettingResults, c: SettingResults, inner_steps, tolerance, alpha, margin, rows=None, seeds=()) -> dict:
    """The paired numbers of one setting; ``rows``: (baseline rows, candidate rows) of the seeds compared, in ``seeds`` order."""
    steps = b.headline_steps if inner_steps is None else inner_steps
    for side, results in (("baseline", b), ("candidate", c)):
        if steps not in results.values:
            which = "--inner-steps" if inner_steps is not None else "the baseline's headline inner-step count"
            raise CheckError(
                f"The {side} has no {results.metric} after {steps} inner steps for {results.describe()} ({which}); it "
                f"recorded inner steps {sorted(results.values)}. Pass --inner-steps one of "
                f"{sorted(set(b.values) & set(c.values))}, or evaluate with evaluation.inner_steps including {steps}."
            )
    base_rows, cand_rows = rows if rows is not None else (list(range(b.runs)), list(range(c.runs)))
    base, cand = b.episode_values(steps, base_rows), c.episode_values(steps, cand_rows)
    base_ok, cand_ok = np.isfinite(base), np.isfinite(cand)
    dropped = int(np.sum(~base_ok))
    non_finite = int(np.sum(base_ok & ~cand_ok))
    keep = base_ok & cand_ok
    if not base_ok.any():
        raise CheckError(f"Every baseline {b.metric} of {b.describe()} at {steps} inner steps is NaN; save a baseline from a run that did not diverge.")
    higher_is_better = metric_higher_is_better(b.metric)
    unit = UNITS[b.metric]
    if b.metric == "accuracy":
        scale = 100.0
    elif b.metric == "mse":
        reference = float(np.mean(base[base_ok]))
        if not reference > 0:
            raise CheckError(f"The baseline's mean MSE of {b.describe()} is {reference}; a relative MSE change needs a positive baseline.")
        scale = 100.0 / reference
    else:
        scale = 1.0
    notes = []
    if dropped:
        notes.append(f"{dropped} episode(s) left out: the baseline's {b.metric} is not finite there")
    if non_finite:
        notes.append(f"{non_finite} episode(s) where the candidate's {b.metric} is not finite (adaptation diverged): regressed")
    nan = math.nan
    level = 1.0 - 2.0 * alpha
    n = int(keep.sum())
    if n == 0:
        numbers = dict(baseline_mean=float(np.mean(base[base_ok])), candidate_mean=nan, difference=nan, ci_low=nan, ci_high=nan,
                       p_worse=nan, p_better=nan, equivalence=None)  # fmt: skip
    else:
        a, r = cand[keep] * scale, base[keep] * scale
        comparison = paired_comparison(a, r, confidence=level)
        worse, better = ("less", "greater") if higher_is_better else ("greater", "less")
        p_worse = paired_one_sided(a, r, alternative=worse).pvalue
        p_better = paired_one_sided(a, r, alternative=better).pvalue
        if n < 2:
            notes.append("one episode only: no test is possible")
        numbers = dict(
            baseline_mean=float(np.mean(base[keep])),
            candidate_mean=float(np.mean(cand[keep])),
            difference=float(comparison.mean_difference),
            ci_low=float(comparison.ci_low),
            ci_high=float(comparison.ci_high),
            p_worse=float(p_worse),
            p_better=float(p_better),
            equivalence=None if margin is None else tost_paired(a, r, margin, alpha=alpha),
        )
    if margin is not None and numbers["equivalence"] is None:
        numbers["equivalence"] = EquivalenceTest(0, nan, float(margin), nan, nan, level, nan, nan, nan, float(alpha), False, "no paired episodes")
    if n and numbers["difference"] == 0.0 and numbers["ci_low"] == numbers["ci_high"] == 0.0:
        notes.append("identical per-episode results (bit-for-bit)")
    per_seed = []
    for seed, base_row, cand_row in zip(seeds, base_rows, cand_rows):
        one_base, one_cand = b.seed_values(steps, [base_row])[0], c.seed_values(steps, [cand_row])[0]
        both = np.isfinite(one_base) & np.isfinite(one_cand)
        per_seed.append((int(seed), float(np.mean(one_cand[both] - one_base[both]) * scale) if both.any() else nan))
    return dict(setting=b, inner_steps=steps, n=n, unit=unit, higher_is_better=higher_is_better, ci_level=level,
                non_finite=non_finite, dropped=dropped, note="; ".join(notes), per_seed=tuple(per_seed), **numbers)  # fmt: skip


def _deciding(settings: Sequence[SettingCheck], decision: str, verdict: str | None) -> int:
    indices = range(len(settings))

    def gain(i: int) -> float:
        return settings[i].gain if math.isfinite(settings[i].gain) else -math.inf

    if decision == "regressed":
        return min((i for i in indices if settings[i].decision == "regressed"), key=gain)
    if verdict == "not equivalent":
        return next(i for i in indices if not (settings[i].equivalence.equivalent and not settings[i].non_finite))
    if decision == "improved":
        return max((i for i in indices if settings[i].decision == "improved"), key=gain)
    return min(indices, key=gain)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def check_thresholds(tolerance, alpha, equivalence, inner_steps) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (math.isfinite(tolerance) and tolerance >= 0):
        raise CheckError(
            f"Received tolerance={tolerance!r}; expected a finite number >= 0 (percentage points of accuracy, percent "
            "of the baseline's mean MSE, or units of return), e.g. 0.5."
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 0.5:
        raise CheckError(f"Received alpha={alpha!r}; expected a significance level strictly between 0 and 0.5, e.g. 0.05.")
    if equivalence is not None and (
        isinstance(equivalence, bool) or not isinstance(equivalence, (int, float)) or not (math.isfinite(equivalence) and equivalence > 0)
    ):
        raise CheckError(f"Received equivalence margin {equivalence!r}; expected a positive number in the tolerance's unit, e.g. 1.0.")
    if inner_steps is not None and (isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0):
        raise CheckError(f"Received inner_steps={inner_steps!r}; expected an inner-step count >= 0 that both sides recorded.")


def _evaluation_hint(baseline_config: dict, candidate_config: dict | None) -> str:
    if candidate_config is None:
        return " Evaluate the candidate with the baseline's [dataset] and [evaluation] settings, or save a new baseline."
    keys = [d for d in config_differences(baseline_config, candidate_config) if d.split(".")[0] in ("dataset", "evaluation", "train")]
    relevant = [d for d in keys if d.startswith(("dataset.", "evaluation."))] or keys
    if relevant:
        return (
            f" Config keys that differ from the baseline's: {'; '.join(relevant)}. Set them as in the baseline "
            "(e.g. --set KEY=VALUE), or save a new baseline."
        )
    return " Evaluate the candidate with the baseline's [dataset] and [evaluation] settings, or save a new baseline."


def _describe_key(key: tuple) -> str:
    dataset, split, ways, shots, _queries = key
    return f"{dataset} {split} {shots}-shot" if ways is None else f"{dataset} {split} {ways}-way {shots}-shot"


def _config_changes(baseline: Baseline, candidate: Baseline) -> list[str]:
    """Config keys that differ, the seed and the display-only keys aside: what makes the recipes differ."""
    return config_differences(baseline.config, candidate.config, ignore=("seed",))


def listed_seeds(seeds: Sequence[int]) -> str:
    """``"0, 1"``, or ``"none"``."""
    return ", ".join(map(str, seeds)) or "none"


def _seed_list(seeds: Sequence[int]) -> str:
    """``"seed 0"`` or ``"seeds 0, 1"``."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _seeds_compared(seeds: Sequence[int], rerun: bool) -> str:
    """E.g. ``"compared seeds 0, 1 (re-ran both)"`` or ``"compared seed 0 (the candidate's run of the same seed)"``."""
    if rerun:
        how = "re-ran it" if len(seeds) == 1 else "re-ran both" if len(seeds) == 2 else f"re-ran all {len(seeds)}"
    else:
        how = "the candidate's run of the same seed" if len(seeds) == 1 else "the candidate's runs of the same seeds, seed by seed"
    return f"compared {_seed_list(seeds)} ({how})"


def _side(results: Baseline, source: str) -> dict:
    """One side of the check in ``--json``."""
    return {"source": source, "config_hash": results.config_hash, "recipe_hash": results.recipe_hash, "run_ids": results.run_ids,
            "seeds": results.seeds, "repeats": list(results.repeats), "versions": results.versions}  # fmt: skip


def _version_differences(baseline: dict, candidate: dict) -> list[str]:
    out = []
    for name in sorted(set(baseline) | set(candidate)):
        left, right = baseline.get(name), candidate.get(name)
        if left != right:
            out.append(f"{name} {left or '(none)'} -> {right or '(none)'}")
    return out


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _unit_suffix(unit: str) -> str:
    """How a difference's unit follows its number: ``" pp"``, ``"% of baseline MSE"``, ``" return"``."""
    return unit if unit.startswith("%") else " " + unit


def _show(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


#: a difference beyond this (percentage points, percent of the baseline's MSE, units of return) is a diverged run, not a measurement
ABSURD_DIFFERENCE = 1e6


def _signed(value: float, unit: str = "", *, say_why: bool = True) -> str:
    """A difference as ``+1.234`` with its unit; ``nan``, ``+inf`` or an absurd size says so instead of 25 digits."""
    if math.isnan(value):
        return f"nan{unit}" + (" (non-finite)" if say_why else "")
    if math.isinf(value):
        return f"{'+' if value > 0 else '-'}inf{unit}" + (" (diverged: non-finite)" if say_why else "")
    if abs(value) > ABSURD_DIFFERENCE:
        return f"{value:+.3g}{unit}" + (" (diverged)" if say_why else "")
    return f"{value:+.3f}{unit}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"

"""Learning-rate time: the S axis, where a step lies on it, and whether a break is the schedule's.

A run's loss is, to first order, a function of the area under its learning rate,

    S(t) = sum_{s <= t} eta_s / eta_max

(the multi-power law of Luo et al. 2025 models whole curves this way, plus a drop while the rate
anneals). During a linear warm-up S grows quadratically in t, so a curve that is a plain power law
in S bends in log-log steps a few warm-ups in: a bend the schedule made. A break the training made
survives on the S axis; the schedule's does not. `schedule_verdict` compares the fits on both axes.

Annealing (a cool-down or a cosine) lowers the loss faster than S alone predicts, so the S axis
keeps only the steps before the rate, once at its peak, first falls below DECAY_KEEP of it: the
decay phase is left out of the S fit rather than modelled (a decay term would add parameters the
null must carry and that short runs cannot pin down).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CurveError
from ..schedule import Schedule, lr_factor
from .curve import Curve

DECAY_KEEP = 0.9  # the S axis ends where the rate, after its peak, first falls below this share of it
MAX_SCHEDULE_STEPS = 5e7  # longest run whose rate is summed step by step from a schedule
SCHEDULE_KEYS = tuple(f.name for f in dataclasses.fields(Schedule))
SCHEDULE_VERDICTS = {  # stable codes: FIT.json's schedule_verdict, the fit table and the summary carry them
    "deceleration": "a break on both axes, at the same place once mapped: the training's own",
    "schedule": "a break in steps that a smooth law in learning-rate time explains as well: the schedule's",
    "steps_only": "a break in steps that no smooth law in learning-rate time explains: the training's, on the step clock",
    "lr_time_only": "a break that appears only in learning-rate time",
    "break_moves": "a break on both axes, at places whose intervals do not overlap once mapped",
}


def schedule_rates(schedule: dict, last_step: float, source: str) -> np.ndarray:
    """eta_s / eta_peak for updates s = 1 .. last_step, from `fit.schedule` (train.schedule's keys,
    `steps` the run's total, `lr` its peak rate, which S does not need)."""
    total = schedule["steps"]
    if last_step > total:
        raise CurveError(f"{source}: fit.schedule (--schedule): steps is {total} but the curve goes on to step "
                         f"{last_step:g}; give the run's total steps")
    if last_step > MAX_SCHEDULE_STEPS or last_step != round(last_step):
        raise CurveError(f"{source}: learning-rate time from a schedule needs whole-number steps up to "
                         f"{MAX_SCHEDULE_STEPS:.0e}; the curve ends at step {last_step:g}")
    s = Schedule(**{k: schedule[k] for k in SCHEDULE_KEYS})
    return np.array([lr_factor(s, t, total) for t in range(int(last_step))])


def column_rates(curve: Curve) -> np.ndarray:
    """eta_s / eta_max for s = 1 .. T from a per-step log's lr column."""
    steps, lr = curve.step, curve.lr
    if lr is None:
        raise CurveError(f"{curve.source}: learning-rate time needs an lr column (the training log has one) or "
                         "the schedule (fit.schedule, --schedule)")
    if not np.array_equal(steps, np.arange(1, len(steps) + 1)):
        raise CurveError(f"{curve.source}: learning-rate time from the lr column needs every step from 1 (a per-step "
                         f"log); this curve has {len(steps)} rows from step {steps[0]:g} to {steps[-1]:g}: give the "
                         "schedule instead (fit.schedule, --schedule)")
    peak = float(lr.max())
    if not peak > 0:
        raise CurveError(f"{curve.source}: the lr column is zero throughout")
    return lr / peak


def decay_start(rates: np.ndarray) -> int | None:
    """The first update (1-based) of the decay phase: after the rate first reaches its peak, the
    first whose rate is below DECAY_KEEP of the peak; None for a run that never decays."""
    top = int(np.argmax(rates))
    below = np.flatnonzero(rates[top:] < DECAY_KEEP * rates[top])
    return None if not len(below) else top + int(below[0]) + 1


def to_lr_time(curve: Curve, schedule: dict | None = None) -> Curve:
    """The curve on the S axis (from `schedule` if given, else its lr column), without its decay phase."""
    if curve.axis != "steps":
        raise CurveError(f"{curve.source}: learning-rate time is built from a steps curve, not from {curve.axis}")
    if schedule is not None:
        rates, source = schedule_rates(schedule, float(curve.step[-1]), curve.source), "schedule"
        at = curve.step.astype(np.int64) - 1
    else:
        rates, source = column_rates(curve), "lr column"
        at = np.arange(len(curve.step))
    decay = decay_start(rates)
    keep = np.ones(len(curve.step), bool) if decay is None else curve.step < decay
    if keep.sum() < 2:
        raise CurveError(f"{curve.source}: the learning rate decays from step {decay}: no steps before the decay "
                         "phase to fit in learning-rate time")
    S = np.cumsum(rates)[at][keep]
    if not S[0] > 0 or np.any(np.diff(S) <= 0):
        raise CurveError(f"{curve.source}: the learning rate is zero before the decay phase; learning-rate time "
                         "does not advance there")
    record = {"source": source, "schedule": schedule, "decay_keep": DECAY_KEEP, "decay_from_step": decay,
              "steps_dropped": int((~keep).sum())}
    out = curve.truncated(keep)
    return dataclasses.replace(out, x=S, axis="lr-area", x_per_step=None, lr_time=record)


def steps_at(S_values, step: np.ndarray, S: np.ndarray):
    """The steps where learning-rate time reaches S_values: log-log interpolation along the map."""
    v = np.exp(np.interp(np.log(np.asarray(S_values, float)), np.log(S), np.log(step)))
    return float(v) if np.ndim(v) == 0 else v


def _overlap(a, b) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def classify(steps_verdict: str, lr_verdict: str, steps_ci, lr_ci_steps, cross_p: float | None = None,
             alpha: float = 0.05) -> str:
    """The schedule verdict from each axis' verdict and t_d interval (the S fit's in steps) and, for a
    break in steps only, the cross-clock test's p-value (`cross_clock`)."""
    if steps_verdict == "deceleration" and lr_verdict == "deceleration":
        return "deceleration" if _overlap(steps_ci, lr_ci_steps) else "break_moves"
    if steps_verdict == "deceleration":
        return "steps_only" if cross_p is not None and cross_p < alpha else "schedule"
    if lr_verdict == "deceleration":
        return "lr_time_only"
    return steps_verdict


def cross_statistic(x_lr: np.ndarray, x_steps: np.ndarray, y: np.ndarray) -> float:
    """How much better a broken power law in steps fits the points than the best smooth law in S."""
    from .breaktest import relative_drop, smooth_null
    from .powerlaws import fit_bnsl

    return relative_drop(smooth_null(x_lr, y)[0].sse, fit_bnsl(x_steps, y).sse)


def cross_clock(prepared, x_steps: np.ndarray, draws: int, rng) -> dict:
    """Does the schedule explain a break in steps? A bootstrap test of the null "a smooth law in
    learning-rate time" (the S fit's smooth law, with its noise) against "a broken power law in
    steps", on the same points: curves are simulated under the S null and both refitted, as in
    the break test. `prepared` is the S axis' PreparedFit; `x_steps` log steps at its points."""
    from .breaktest import bootstrap_pvalue

    T = cross_statistic(prepared.x, x_steps, prepared.y)
    p, used = bootstrap_pvalue(T, prepared.noise.simulator.sampler(prepared.null.log_predict),
                               lambda ys: cross_statistic(prepared.x, x_steps, ys), draws, rng)
    return {"p_value": p, "statistic": T, "draws": used, "null_law": prepared.null.law}


def schedule_verdict(steps_fit, lr_fit, cross: dict | None = None) -> dict:
    """Classify a run from its fits on steps and on learning-rate time (BrokenPowerLawFit each).

    `deceleration` needs a deceleration on both axes whose t_d intervals (the S fit's mapped back to
    steps) overlap; `schedule` a deceleration in steps only; `lr_time_only` one in S only; otherwise
    the steps verdict (power_law, smooth_bend, acceleration)."""
    sv, lv = steps_fit.verdict, lr_fit.verdict
    d_steps, d_lr = steps_fit.derived(), lr_fit.derived()
    ci_steps, ci_lr = steps_fit.conf_int(), lr_fit.conf_int()
    verdict = classify(sv, lv, ci_steps["t_d"], ci_lr.get("t_d_steps"), cross and cross["p_value"], steps_fit.test.alpha)
    lr = lr_fit.lr_time
    return {
        "verdict": verdict,
        "meaning": SCHEDULE_VERDICTS.get(verdict, "no deceleration on either axis: the steps verdict"),
        "steps": {"verdict": sv, "p_value": steps_fit.test.p_value, "t_d": d_steps["t_d"] if sv == "deceleration" else None,
                  "ci_t_d": ci_steps["t_d"] if sv == "deceleration" else None},
        "lr_area": {"verdict": lv, "p_value": lr_fit.test.p_value,
                    "t_d": d_lr["t_d"] if lv == "deceleration" else None,
                    "ci_t_d": ci_lr["t_d"] if lv == "deceleration" else None,
                    "t_d_steps": d_lr["t_d_steps"] if lv == "deceleration" else None,
                    "ci_t_d_steps": ci_lr["t_d_steps"] if lv == "deceleration" else None,
                    "fit_range": list(lr_fit.fit_range), "source": lr["source"],
                    "decay_from_step": lr["decay_from_step"],
                    "warnings": [w["code"] for w in lr_fit.warnings()]},
        "cross_clock": cross,
    }


def describe(record: dict | None) -> str:
    """One line on a run's schedule verdict, with t_d on both clocks where each found a deceleration."""
    if record is None:
        return "not classified (no lr column or schedule)"
    s, a = record["steps"], record["lr_area"]

    def value(d: dict, key: str) -> str:
        iv = d[f"ci_{key}"]
        return f"{d[key]:.0f}" + (f" (95% CI {iv[0]:.0f}-{iv[1]:.0f})" if iv else "")

    steps = s["verdict"] + ("" if s["t_d"] is None else f", t_d {value(s, 't_d')}")
    lr = f"{a['verdict']} (p = {a['p_value']:.3g})" + ("" if a["t_d"] is None else
                                                      f", t_d {value(a, 't_d')}, i.e. step {value(a, 't_d_steps')}")
    cut = "" if a["decay_from_step"] is None else f"; S ends where the rate decays, step {a['decay_from_step']}"
    cross = record.get("cross_clock")
    cross = "" if not cross else f"; the steps break against S's smooth law: p = {cross['p_value']:.3g}"
    return f"{record['verdict']} (steps: {steps}; learning-rate time S: {lr}{cut}{cross})"

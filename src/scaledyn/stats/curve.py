"""Loss curves as they arrive: reading, validation, duplicate steps, and the reference preprocessing.

A curve is `step, loss` rows. Steps may be any positive numbers (a tokens or FLOPs axis up to
1e30 works); losses must be positive and finite. Training logs repeat steps after a resume, so
repeated steps are resolved by a policy instead of refused (`last` keeps what the resumed run
logged). Preprocessing follows the paper's reference analysis (docs/method.md section 3).
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CurveError
from .options import SUBSAMPLE_CAP

DUPLICATE_POLICIES = ("last", "first", "mean", "error")
INPUT_KINDS = ("auto", "no", "log-ma", "other")  # what was done to the curve before it reached us
MA_FACTOR = 1.2


AXES = ("steps", "tokens", "flops", "lr-area")  # what the fitted x is; preprocessing always works on training steps


@dataclass(frozen=True)
class Curve:
    """A loss curve on training steps, and the axis the laws are fitted on.

    Smoothing windows, log subsampling and the transient cut are defined on training steps (the
    reference pipeline's), so they mean the same whatever the fitted axis: a curve in tokens is
    preprocessed exactly like the same curve in steps and its t_d comes out in tokens."""

    step: np.ndarray
    loss: np.ndarray
    source: str = "curve"
    rows_read: int = 0
    duplicates: dict | None = None  # what the duplicate policy did, for FIT.json
    x: np.ndarray | None = None  # the fitted axis' values where it is not `step`
    axis: str = "steps"
    x_per_step: float | None = None  # a tokens or FLOPs axis read without a step column: its unit
    lr: np.ndarray | None = None  # the learning rate of each row's update, where the log has it
    lr_time: dict | None = None  # on the lr-area axis: how S was built and where the decay phase was cut

    @property
    def axis_values(self) -> np.ndarray:
        return self.step if self.x is None else self.x

    def truncated(self, keep: np.ndarray) -> "Curve":
        """The same curve restricted to the rows `keep` (a boolean mask)."""
        return dataclasses.replace(self, step=self.step[keep], loss=self.loss[keep],
                                   x=None if self.x is None else self.x[keep], lr=None if self.lr is None else self.lr[keep])


def _row(i: int) -> str:
    return f"row {i + 1} (line {i + 2})"


def _check_values(name: str, col: np.ndarray, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
        i = bad[0]
        raise CurveError(f"{source}: {_row(i)}: {name} is {col[i]} (NaN or infinite values cannot be fitted)")
    bad = np.flatnonzero(col <= 0)
    if bad.size:
        i = bad[0]
        what = "a power law needs log(loss)" if name == "loss" else "a power law needs log(step)"
        raise CurveError(f"{source}: {_row(i)}: {name} {col[i]:g} is not positive; {what}")


def resolve_duplicates(step: np.ndarray, loss: np.ndarray, policy: str, source: str) -> tuple[np.ndarray, dict]:
    """Row indices to keep, in file order, and a record of what was dropped.

    Exact repeats (same step, same loss) are dropped silently. Conflicting values for one step
    follow `policy`: `last` (a resumed run re-logs the steps after its checkpoint: the later rows
    are what the run continued from), `first`, `mean`, or `error`."""
    if policy not in DUPLICATE_POLICIES:
        raise CurveError(f"{source}: on_duplicate must be one of {DUPLICATE_POLICIES}, got {policy!r}")
    order = np.lexsort((np.arange(len(step)), step))  # by step, then file order
    s = step[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    keep, values = [], loss.copy()
    exact = conflicting = 0
    for start, size in zip(starts, sizes):
        rows = order[start : start + size]
        if size == 1:
            keep.append(rows[0])
            continue
        distinct = np.unique(loss[rows])
        exact += size - len(distinct)
        if len(distinct) == 1:
            keep.append(rows[-1] if policy == "last" else rows[0])
            continue
        conflicting += 1
        if policy == "error":
            raise CurveError(f"{source}: {_row(rows[1])}: step {step[rows[0]]:g} appears {size} times with different losses "
                             f"(first at {_row(rows[0])}); choose --on-duplicate last|first|mean")
        if policy == "mean":
            values[rows[0]] = loss[rows].mean()
        keep.append(rows[-1] if policy == "last" else rows[0])
    kept = np.sort(np.array(keep, dtype=np.int64))
    record = {"policy": policy, "exact_repeats_dropped": int(exact), "conflicting_steps": int(conflicting),
              "rows_dropped": int(len(step) - len(kept))}
    if conflicting:
        warnings.warn(f"{source}: {conflicting} step(s) logged more than once with different losses; "
                      f"kept the {policy} value{'s' if policy != 'mean' else ''} (--on-duplicate)", stacklevel=3)
    return kept, {**record, "values": values}


def validate_curve(step, loss, source: str = "curve", on_duplicate: str = "last", x=None, axis: str = "steps",
                   x_per_step: float | None = None, lr=None) -> Curve:
    """Refuse what would silently corrupt a fit; rows are numbered as in a CSV with a header.

    `x` is the fitted axis where it is not `step` (tokens, FLOPs): it must rise with the steps.
    `lr` (optional) is each row's learning rate: finite and not negative."""
    step = np.asarray(step, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if axis not in AXES:
        raise CurveError(f"{source}: axis must be one of {AXES}, got {axis!r}")
    if step.shape != loss.shape or step.ndim != 1:
        raise CurveError(f"{source}: step and loss columns differ in length")
    if len(step) == 0:
        raise CurveError(f"{source}: no data rows")
    _check_values("step", step, source)
    _check_values("loss", loss, source)
    kept, record = resolve_duplicates(step, loss, on_duplicate, source)
    values = record.pop("values")
    _, inverse, counts = np.unique(step, return_inverse=True, return_counts=True)
    single = np.flatnonzero(counts[inverse] == 1)  # rows whose step is logged only once, in file order
    d = np.diff(step[single])
    if np.any(d < 0):
        j = int(np.flatnonzero(d < 0)[0])
        i, prev = single[j + 1], single[j]
        raise CurveError(f"{source}: {_row(i)}: step {step[i]:g} comes after step {step[prev]:g} ({_row(prev)}) "
                         "and is not a repeat of an earlier step; steps must increase")
    kept = kept[np.argsort(step[kept], kind="stable")]  # repeated blocks resolved: the curve in step order
    if lr is not None:
        lr = np.asarray(lr, dtype=float)
        bad = np.flatnonzero(~(np.isfinite(lr) & (lr >= 0)))
        if bad.size:
            raise CurveError(f"{source}: {_row(bad[0])}: lr is {lr[bad[0]]:g}; a learning rate must be finite and not negative")
        lr = lr[kept]
    if x is not None:
        x = np.asarray(x, dtype=float)[kept]
        _check_values(axis, x, source)
        if np.any(np.diff(x) <= 0):
            j = int(np.flatnonzero(np.diff(x) <= 0)[0])
            raise CurveError(f"{source}: {axis} {x[j + 1]:g} at step {step[kept][j + 1]:g} does not rise above "
                             f"{x[j]:g} at step {step[kept][j]:g}; the fitted axis must increase with the steps")
    return Curve(step[kept], values[kept], source, len(step), record, x, axis, x_per_step, lr)


def infer_x_per_step(x: np.ndarray, source: str) -> float:
    """The tokens (or FLOPs) per step of an axis read without a step column: the smallest gap
    between rows, accepted only if every value is a whole number of it (a per-step log, or the
    reference's log-subsampled curve, whose rows from step 10 to 99 are consecutive)."""
    x = np.unique(np.asarray(x, float))
    gaps = np.diff(x)
    unit = float(gaps.min()) if len(gaps) else float(x[0])
    ratio = x / unit
    if len(x) < 2 or np.max(np.abs(ratio - np.round(ratio))) > 1e-6:
        raise CurveError(f"{source}: the steps of this axis cannot be inferred (its values are not whole multiples of "
                         "the smallest gap between rows); add a step column or give --x-per-step")
    return unit


AXIS_COLUMN = {"steps": "step", "tokens": "tokens", "flops": "flops"}  # lr-area: stats/lrtime.py builds it from steps


def read_curve_csv(path: str | Path, on_duplicate: str = "last", axis: str = "steps",
                   x_per_step: float | None = None) -> Curve:
    """A `step,loss` CSV (other columns ignored), with one-line errors for every malformed file.

    With `axis` tokens or flops the fitted x is that column; the steps come from a `step` column,
    or are the axis divided by `x_per_step` (inferred from the grid when not given)."""
    import pandas as pd

    path = Path(path)
    if axis not in AXIS_COLUMN:
        raise CurveError(f"{path}: a CSV is read on {tuple(AXIS_COLUMN)}, got {axis!r} (lr-area is built from steps: stats.lrtime)")
    if x_per_step is not None and not (math.isfinite(x_per_step) and x_per_step > 0):
        raise CurveError(f"{path}: x_per_step must be a positive number, got {x_per_step!r}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CurveError(f"{path}: file not found") from None
    except OSError as e:
        raise CurveError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CurveError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                         "save it as UTF-8 CSV") from None
    x_col = AXIS_COLUMN[axis]
    if not text.strip():
        raise CurveError(f"{path}: empty file (need a header line `{x_col},loss` and data rows)")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise CurveError(f"{path}: not a readable CSV ({str(e).strip()})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in (x_col, "loss") if c not in df.columns]
    if missing:
        raise CurveError(f"{path}: missing column(s) {missing}; found {list(df.columns)} (need {x_col},loss)")
    if len(df) == 0:
        raise CurveError(f"{path}: header only, no data rows")
    cols = {}
    for c in dict.fromkeys([x_col, "loss"] + [c for c in ("step", "lr") if c in df.columns]):
        text_col = df[c].str.strip()
        empty = np.flatnonzero(text_col == "")
        if empty.size:
            raise CurveError(f"{path}: {_row(empty[0])}: {c} is empty")
        num = pd.to_numeric(text_col, errors="coerce")  # "nan" and "inf" parse, and are refused below with their row
        bad = np.flatnonzero(num.isna() & ~text_col.str.lower().str.lstrip("+-").eq("nan"))
        if bad.size:
            i = bad[0]
            raise CurveError(f"{path}: {_row(i)}: {c} {df[c].iloc[i]!r} is not a number")
        cols[c] = num.to_numpy(dtype=float)
    if axis == "steps":
        return validate_curve(cols["step"], cols["loss"], str(path), on_duplicate, lr=cols.get("lr"))
    x = cols[x_col]
    _check_values(x_col, x, str(path))
    if "step" in cols and x_per_step is None:
        return validate_curve(cols["step"], cols["loss"], str(path), on_duplicate, x=x, axis=axis)
    unit = x_per_step or infer_x_per_step(x, str(path))
    return validate_curve(x / unit, cols["loss"], str(path), on_duplicate, x=x, axis=axis, x_per_step=unit)


# ----------------------------------------------------------------------------- preprocessing


def window_starts(steps: np.ndarray, factor: float = MA_FACTOR) -> np.ndarray:
    """The row where each row's smoothing window starts. The window of the point at step s holds
    the rows whose steps lie in [floor((s - 1) / factor) + 1, s]: on a per-step log from step 1
    that is rows floor(j / factor) .. j, the reference's definition; on a sparser or irregular
    grid (every 7th step, a log-spaced grid) it is the same span of log steps, however many rows
    fall in it, never a count of rows that could reach back decades."""
    steps = np.asarray(steps, float)
    return np.searchsorted(steps, np.floor((steps - 1) / factor) + 1, side="left")


def log_moving_average(y: np.ndarray, steps: np.ndarray | None = None, factor: float = MA_FACTOR) -> np.ndarray:
    """y_s at each row: the mean of y over its window (window_starts); `steps` default 1, 2, ..."""
    y = np.asarray(y, float)
    j = np.arange(len(y))
    lo = window_starts(j + 1.0 if steps is None else steps, factor)
    c = np.concatenate([[0.0], np.cumsum(y)])
    return (c[j + 1] - c[lo]) / (j + 1 - lo)


class WindowMeans:
    """The log moving average of values on a step grid, at chosen rows only: the bootstrap smooths
    hundreds of simulated curves and reads a few hundred points of each. Called with the values
    from row `first` (the first any chosen window needs) to the end."""

    def __init__(self, steps: np.ndarray, rows: np.ndarray):
        lo = window_starts(steps)[rows]
        self.first = int(lo.min())
        self.start, self.stop, self.width = lo - self.first, rows + 1 - self.first, rows + 1 - lo

    def __call__(self, values: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(values)])
        return (c[self.stop] - c[self.start]) / self.width


def _decade(x: np.ndarray) -> np.ndarray:
    """floor(log10 x) without floating-point surprises at exact powers of ten."""
    powers = 10.0 ** np.arange(0, 309)
    return np.searchsorted(powers, x, side="right") - 1


def log_subsample_mask(steps: np.ndarray, cap: float = SUBSAMPLE_CAP) -> np.ndarray:
    """Every step in [10, 100), every 10th in [100, 1e3), every 100th in [1e3, 1e4), then every
    `cap`-th (1,000th) step however far the run goes, plus the last point.

    Implemented as "the first row in each stride-wide bin": on a per-step log that is exactly the
    multiples of the stride; on a sparser log (every 7th step, a tokens axis) it never empties a
    decade; and it works for any positive float (no integer overflow at 1e19)."""
    x = np.asarray(steps, dtype=float)
    keep = np.zeros(len(x), dtype=bool)
    ok = x >= 10
    d = _decade(np.where(ok, x, 10.0))
    stride = np.minimum(10.0 ** (d - 1), cap)
    bins = np.floor(x / stride)
    key = np.column_stack([d, bins])[ok]
    idx = np.flatnonzero(ok)
    if len(idx):
        first = np.r_[True, np.any(key[1:] != key[:-1], axis=1)]
        keep[idx[first]] = True
    keep[-1] = True
    return keep


def looks_subsampled(steps: np.ndarray) -> bool:
    """A log-subsampled curve: its step gaps grow by factors of ten (1, 10, 100, ...)."""
    gaps = np.diff(steps)
    if len(gaps) < 20:
        return False
    return bool(gaps.max() / max(gaps.min(), 1e-300) >= 9.5 and np.all(log_subsample_mask(steps)))


@dataclass(frozen=True)
class Preprocessing:
    """What the fit applies (smoothing, subsample, transient) and what the input already had.

    input_smoothed: `no` (a raw per-step log), `log-ma` (already smoothed with the reference log
    moving average, and usually log-subsampled: published curves), `other` (smoothed some other
    way: t_d then refers to that smoothed curve), or `auto` (log-subsampled steps mean the
    reference pipeline's output, i.e. `log-ma`; otherwise `no`)."""

    smoothing: str = "log-ma"
    subsample: str = "log"
    transient_steps: float = 100
    input_smoothed: str = "auto"

    def resolve(self, steps: np.ndarray) -> tuple["Preprocessing", list[str]]:
        notes = []
        kind = self.input_smoothed
        if kind not in INPUT_KINDS:
            raise CurveError(f"input_smoothed must be one of {INPUT_KINDS}, got {kind!r}")
        if kind == "auto":
            kind = "log-ma" if looks_subsampled(steps[steps > self.transient_steps]) else "no"
            if kind == "log-ma":
                notes.append("input looks log-subsampled, i.e. already smoothed and subsampled by the reference pipeline: "
                             "not smoothed or subsampled again (pass --input-smoothed other if it was smoothed differently, "
                             "or no if it is a raw log)")
        if kind != "no" and (self.smoothing != "none" or self.subsample != "none"):
            if self.input_smoothed != "auto":
                notes.append(f"input declared smoothed ({kind}): smoothing and subsampling skipped")
            return Preprocessing("none", "none", self.transient_steps, kind), notes
        return Preprocessing(self.smoothing, self.subsample, self.transient_steps, kind), notes

    @property
    def raw_input(self) -> bool:
        return self.input_smoothed == "no"

    @property
    def smoothed_by(self) -> str | None:
        """Which smoother shaped the fitted points (ours or the input's), if known."""
        if self.smoothing == "log-ma" or self.input_smoothed == "log-ma":
            return "log-ma"
        return None if self.input_smoothed == "no" else "other"

    def to_dict(self) -> dict:
        return {"smoothing": self.smoothing, "subsample": self.subsample, "transient_steps": self.transient_steps,
                "input_smoothed": self.input_smoothed}


def fit_points(steps: np.ndarray, loss: np.ndarray, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the fitted points, their (possibly smoothed) losses, and the smoothed full curve."""
    smooth = log_moving_average(loss, steps) if pre.smoothing == "log-ma" else np.asarray(loss, float)
    keep = log_subsample_mask(steps) if pre.subsample == "log" else np.ones(len(steps), bool)
    keep &= steps > pre.transient_steps
    idx = np.flatnonzero(keep)
    return idx, smooth[idx], smooth

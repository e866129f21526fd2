import dataclasses
import math
import shutil
import types

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scaledyn import report
from scaledyn.stats.curve import validate_curve
from scaledyn.stats.fit import fit_curve
from scaledyn.stats.lrtime import schedule_verdict, to_lr_time
from scaledyn.stats.options import FitOptions
from scaledyn.stats.powerlaws import bnsl_log
from scaledyn.stats.trends import fit_trend


@pytest.fixture(scope="module")
def res(tiny_study):
    return report.StudyResults.of_study(tiny_study, ["tiny-6k_s0", "tiny-1k_s0"])


def with_a_break(res):
    """The tiny study's runs, with tiny-6k's curve replaced by one that has a clear deceleration."""
    t = np.arange(1, 3001, dtype=float)
    y = np.exp(bnsl_log(np.log(t), [math.log(10), 0.3, -0.25, math.log(500), 0.1])
               + np.random.default_rng(0).normal(0, 0.02, 3000))
    fits = {**res.fits, "tiny-6k_s0": fit_curve(validate_curve(t, y), dataclasses.replace(FitOptions.defaults(), bootstrap=49))}
    curves = {**res.curves, "tiny-6k_s0": pd.DataFrame({"step": t, "loss": y})}
    return report.StudyResults(res.runs, res.meta, fits, curves, res.trends, res.zsl, res.windows)


def test_outputs_exist(tiny_study):
    out = tiny_study.report
    for name in report.FIGURES:
        assert out.figure(name).stat().st_size > 1000 and out.figure(name, "pdf").exists()
    for ext in ("csv", "md", "tex"):
        assert out.table(ext).exists()
    summary = out.summary.read_text()
    assert "tiny-1k_s0" in summary and "Zero-sum learning" in summary and "D eval / held-out" in summary
    assert "```" not in summary  # renders as Markdown, not a code block


def test_runs_in_size_order_with_fixed_colours(res):
    assert res.runs == ["tiny-1k_s0", "tiny-6k_s0"]  # by N, whatever order they were given in
    assert res.label("tiny-1k_s0").startswith("N = ") and not np.allclose(res.color(res.runs[0]), res.color(res.runs[1]))


def test_loss_curves_one_line_per_size_on_log_axes(res):
    fig = report.fig_loss_curves(with_a_break(res))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    labelled = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(labelled) == 2 and all(label.startswith("N = ") for label in labelled)
    assert "deceleration" in labelled[1]
    assert sum(line.get_gid() == "fit" for line in ax.get_lines()) == 2  # every run: its verdict's law
    assert sum(line.get_gid() == "segment" for line in ax.get_lines()) == 2  # only the break has segments
    assert sum(line.get_gid() == "t_d" for line in ax.get_lines()) == 1
    assert any(t.get_text().startswith("t_d ") for t in ax.texts)  # the t_d line is labelled
    plt.close(fig)


def test_zsl_figures(res):
    fig = report.fig_zsl(res, "dt=t")
    for ax, label in zip(fig.axes, ("D", "M", "|ΔL|")):
        assert ax.get_xscale() == "log" and label in ax.get_ylabel()
        assert len(ax.get_lines()) == 2  # one per size
    assert len(fig.axes[0].collections) == 2  # the ± std bands
    plt.close(fig)
    fig = report.fig_zsl(res, "dt=1")
    for ax in fig.axes:
        assert len(ax.containers) == 2  # measured points with error bars, one set per size
        assert all(line.get_linestyle() == "None" for line in ax.get_lines() if len(line.get_xdata()) > 1)
    plt.close(fig)
    fig = report.fig_d_vs_m(with_a_break(res))
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("M") and ax.get_ylabel() == "D"
    assert sum(line.get_gid() == "t_d" for line in ax.get_lines()) == 1
    assert sum(t.get_gid() == "direction" for t in ax.texts) == 2 and "direction of training" in ax.get_title()
    assert all("→" in t.get_text() for t in ax.get_legend().get_texts())  # which steps each line spans
    plt.close(fig)
    fig = report.fig_zsl(with_a_break(res), "dt=t")  # the break's step, on every panel
    assert all(sum(line.get_gid() == "t_d" for line in ax.get_lines()) == 1 for ax in fig.axes)
    plt.close(fig)


def test_scaling_figure_with_weighted_trend():
    sizes = pd.DataFrame({"run": list("abcd"), "size": list("abcd"), "N": [1e4, 3e4, 1e5, 3e5], "verdict": "deceleration",
                          "L_d": [5.0, 4.6, 4.3, 4.0], "L_d_lo": [4.9, 4.5, 4.2, 3.9], "L_d_hi": [5.1, 4.7, 4.4, 4.1],
                          "L_d_se": 0.01, "r_d": [0.1, 0.12, 0.15, 0.17], "r_d_lo": [0.09, 0.11, 0.14, 0.16],
                          "r_d_hi": [0.11, 0.13, 0.16, 0.18], "r_d_se": 0.005, "c0": 0.3, "c0_se": 0.01})
    trends = [fit_trend(sizes, t) for t in ("log L_d", "r_d", "c0")]
    res = types.SimpleNamespace(sizes=sizes, trends=trends, color=lambda r: "C0", label=lambda r: f"N of {r}")
    fig = report.fig_scaling(res)
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert len(ax.collections) >= 1  # the confidence band
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("WLS trend" in t and "significant" in t for t in texts)
    plt.close(fig)
    few = types.SimpleNamespace(sizes=sizes.assign(verdict=["power_law"] * 3 + ["deceleration"]),
                                trends=[fit_trend(sizes.assign(verdict="power_law"), t) for t in ("log L_d", "r_d", "c0")],
                                color=lambda r: "C0", label=lambda r: r)
    fig = report.fig_scaling(few)
    assert all("no trend" in " ".join(t.get_text() for t in ax.texts) for ax in fig.axes)
    plt.close(fig)


def test_histograms_do_not_pile_outliers_into_edge_bins(res):
    x = np.concatenate([np.random.default_rng(0).normal(0, 0.1, 100000), np.full(50, 50.0)])
    fig = report.fig_histograms(res, {"tiny-1k_s0": (16, x)})
    heights = fig.axes[0].patches[0].get_path().vertices[1:-1:2, 1]  # one per bin
    assert heights[-1] < 2 * heights[-3]  # clipped outliers would make the edge bin a spike (~8x here)
    assert "beyond" in fig.axes[0].get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_summary_claims_only_what_verdicts_support(res):
    text = report.summary_markdown(res)
    if all(f.verdict != "deceleration" for f in res.fits.values()):
        assert "show no abrupt deceleration" in text and "no trend with size could be estimated" in text
        assert "no trend with size is significant" not in text  # a trend that was never fitted is not 'not significant'
    assert "one seed per size" in text
    text = report.summary_markdown(with_a_break(res))  # (its break is qualified: the tiny study's windows are another curve's)
    assert "tiny-6k_s0 (N = 6,336): deceleration (" in text and " at t_d = " in text and "95% CI" in text


def test_summary_says_which_breaks_the_schedule_explains(res):
    """A break in steps that learning-rate time fits with a smooth law is the schedule's, in words."""
    broke = with_a_break(res)
    t = np.arange(1, 3001, dtype=float)
    smooth = validate_curve(t, np.exp(2 - 0.2 * np.log(t) + np.random.default_rng(0).normal(0, 0.02, 3000)),
                            lr=np.full(3000, 1e-3))
    options = dataclasses.replace(FitOptions.defaults(), bootstrap=49)
    lr_fit = fit_curve(to_lr_time(smooth), dataclasses.replace(options, axis="lr-area"))
    steps_fit = dataclasses.replace(broke.fits["tiny-6k_s0"], schedule=schedule_verdict(broke.fits["tiny-6k_s0"], lr_fit))
    assert steps_fit.schedule["verdict"] == "schedule"
    text = report.summary_markdown(dataclasses.replace(broke, fits={**broke.fits, "tiny-6k_s0": steps_fit}))
    assert "## Is the bend the schedule's?" in text and "The schedule explains the breaks of tiny-6k_s0" in text
    assert "tiny-6k_s0: schedule (steps: deceleration, t_d" in text and "learning-rate time S: power_law" in text
    assert "the breaks of tiny-6k_s0 are the schedule's" in text  # and in what the run does not show
    table = report.fit_table(dataclasses.replace(broke, fits={**broke.fits, "tiny-6k_s0": steps_fit}).sizes)
    assert "schedule" in set(table["schedule verdict"])


def test_legend_and_headline_carry_the_verdict_the_window_check_leaves(res):
    """A run whose break moves across fit windows is not called a plain 'deceleration' anywhere."""
    broke = with_a_break(res)
    moving = pd.DataFrame({"transient_steps": [50, 100, 200], "end_step": 3000, "verdict": "deceleration",
                           "t_d": [200.0, 500.0, 1500.0]})
    unstable = dataclasses.replace(broke, windows={r: moving for r in res.runs})
    legend = [t.get_text() for t in report.fig_loss_curves(unstable).axes[0].get_legend().get_texts()]
    assert any("deceleration (moves across fit windows)" in t for t in legend)
    plt.close("all")
    text = report.summary_markdown(unstable)
    assert "tiny-6k_s0 (N = " in text and "deceleration (in the main fit window only: it moves across fit windows)" in text


def test_summary_says_plainly_when_no_deceleration_survives_the_windows(res):
    """A deceleration verdict in the default window alone is not the study's finding."""
    windows = {r: pd.DataFrame({"transient_steps": [50, 100, 200], "end_step": 3000, "verdict": v,
                                "t_d": [400.0, 500.0, 900.0]})
               for r, v in zip(res.runs, (["smooth_bend", "deceleration", "power_law"], ["deceleration"] * 3))}
    broke = with_a_break(res)
    unstable_only = dataclasses.replace(broke, windows={r: windows[res.runs[0]] for r in res.runs})
    text = report.summary_markdown(unstable_only)
    assert "this run does not show an abrupt deceleration at this scale" in text
    assert "change verdict or move t_d by more than ±25%" in text
    t_d = broke.fits["tiny-6k_s0"].derived()["t_d"]
    steady = {r: windows[r].assign(verdict="deceleration", t_d=[t_d * 0.9, t_d, t_d * 1.1]) for r in res.runs}
    text = report.summary_markdown(dataclasses.replace(broke, windows=steady))
    assert "does not show an abrupt deceleration at this scale" not in text


@pytest.mark.skipif(not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                    reason="no headless Chromium (Debian's chromium)")
def test_fit_table_and_summary_fit_a_laptop_page_in_chromium(res, tmp_path):
    """Rendered by headless Chromium in a 1,400 px window, neither the fit table (a study with a
    schedule verdict, intervals and warnings in every row) nor the summary is cut off."""
    from benchmarks.screenshots import content_width

    sizes = with_a_break(res).sizes
    sizes["schedule_verdict"], sizes["lr_area_t_d_steps"] = "deceleration", 555.5
    sizes["lr_area_t_d_steps_lo"], sizes["lr_area_t_d_steps_hi"] = 444.4, 666.6
    sizes["warnings"] = "near_floor other_basin window_unstable"
    page = tmp_path / "fits.html"
    page.write_text(report.table_html(report.fit_table(pd.concat([sizes] * 3, ignore_index=True))))
    assert content_width(page, 1400) <= 1400
    summary = tmp_path / "summary.html"
    summary.write_text(report.summary_html(with_a_break(res)))
    assert content_width(summary, 1400) <= 1400

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from scaledyn import report


@pytest.fixture(scope="module")
def inputs(tiny_study):
    runs = ["tiny-1k_s0", "tiny-6k_s0"]
    curves = {r: pd.read_csv(tiny_study / "runs" / r / "train_log.csv") for r in runs}
    fits = {r: json.loads((tiny_study / "fits" / f"{r}.json").read_text()) for r in runs}
    z = pd.read_parquet(tiny_study / "zsl" / "zsl.parquet")
    return curves, fits, z


def test_outputs_exist(tiny_study):
    out = tiny_study / "report"
    for name in report.FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").exists()
    for ext in ("csv", "md", "tex"):
        assert (out / f"fits.{ext}").exists()
    summary = (out / "summary.md").read_text()
    assert "tiny-1k_s0" in summary and "Zero-sum learning" in summary and "D = " in summary


def test_loss_curves_one_line_per_size_on_log_axes(inputs):
    curves, fits, _ = inputs
    # give one run a fitted break so that the fit, both segments and t_d are drawn
    fits = {**fits, "tiny-6k_s0": {**fits["tiny-6k_s0"], "model": "broken_power_law", "t_d": 20.0, "L_d": 4.0, "c0": 0.3,
                                   "r_d": 0.1, "fit_range": [5, 64],
                                   "broken_power_law": {"params": {"log_b": 2.0, "c0": 0.3, "c1": -0.2, "log_d1": 3.0, "f1": 0.3}}}}
    fig = report.fig_loss_curves(curves, fits)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    labelled = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labelled == ["tiny-1k_s0", "tiny-6k_s0"]
    assert sum(line.get_gid() == "fit" for line in ax.get_lines()) == 1
    assert sum(line.get_gid() == "segment" for line in ax.get_lines()) == 2
    assert sum(line.get_gid() == "t_d" for line in ax.get_lines()) == 1
    plt.close(fig)


def test_zsl_figures(inputs):
    _, fits, z = inputs
    for variant in ("dt=t", "dt=1"):
        fig = report.fig_zsl(z, variant)
        assert len(fig.axes) == 3
        for ax, label in zip(fig.axes, ("D", "M", "|ΔL|")):
            assert ax.get_xscale() == "log" and label in ax.get_ylabel()
            assert len(ax.get_lines()) == 2  # one per size
        assert len(fig.axes[0].collections) == 2  # the ± std bands
        plt.close(fig)
    fig = report.fig_d_vs_m(z, {"tiny-1k_s0": {"t_d": 10.0}})
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("M") and ax.get_ylabel() == "D"
    assert sum(line.get_gid() == "t_d" for line in ax.get_lines()) == 1
    plt.close(fig)


def test_scaling_figure_with_regression_band():
    sizes = pd.DataFrame({"N": [1e4, 3e4, 1e5, 3e5], "has_break": True, "L_d": [5.0, 4.6, 4.3, 4.0],
                          "L_d_lo": [4.9, 4.5, 4.2, 3.9], "L_d_hi": [5.1, 4.7, 4.4, 4.1], "r_d": [0.1, 0.12, 0.15, 0.17],
                          "r_d_lo": [0.09, 0.11, 0.14, 0.16], "r_d_hi": [0.11, 0.13, 0.16, 0.18],
                          "c0": [0.30, 0.33, 0.35, 0.38]})
    from scaledyn.trends import regress

    sizes["seed"] = 0
    trends = regress(sizes)
    assert trends.set_index("target").loc["r_d", "slope"] > 0
    fig = report.fig_scaling(sizes, trends)
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert len(ax.collections) >= 1  # the confidence band
        assert any("OLS" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)

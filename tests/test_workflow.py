"""The workflow itself: lint, planning, incremental reruns (checked on `snakemake -n` summaries)."""

import copy
import re
import subprocess
import sys

from conftest import REPO, TINY, run_workflow


def planned(proc) -> dict[str, int]:
    stats = proc.stdout.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m.group(1) != "total"}


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_default_and_paper_dags_plan_offline(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/paper.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    jobs = planned(proc)
    assert jobs["train"] == 6 and jobs["evaluate"] == 6 * 19 and jobs["zsl_dt1"] == 6 * 6
    assert jobs["prepare_slice"] == 256 and jobs["prepare_data"] == 1  # sharded preparation
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(REPO / "config.yaml"), "--directory", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    jobs = planned(proc)
    assert {"prepare_data", "train", "evaluate", "fit_run", "fit_scaling", "zsl_dtt", "zsl_dt1", "report"} <= set(jobs)


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["model"]["sizes"] = ["tiny-1k", "enormous"]
    proc = run_workflow(tmp_path, cfg, "-n", check=False)
    assert proc.returncode != 0
    assert "model.sizes[1]: unknown size 'enormous'" in proc.stdout + proc.stderr


def test_incremental_reruns(tiny_study, tmp_path):
    work = tiny_study.root.parent
    cfg = (work / "config.yaml").read_text()
    try:
        import yaml

        base = yaml.safe_load(cfg)
        assert planned(run_workflow(work, base, "-n")) == {}  # finished: nothing to do
        more = copy.deepcopy(base)
        more["model"]["sizes"] = base["model"]["sizes"] + ["tiny-11k"]
        jobs = planned(run_workflow(work, more, "-n"))
        assert jobs["train"] == 1 and jobs["evaluate"] == 7 and jobs["zsl_dt1"] == 2 and jobs["fit_run"] == 1
        assert "prepare_data" not in jobs and jobs["zsl_dtt"] == 1
        proc = run_workflow(work, more, "-n", "-p")
        assert "tiny-1k_s0/run.json" not in proc.stdout.split("rule train:")[1].split("rule ")[0] if "rule train:" in proc.stdout else True
        fit = copy.deepcopy(base)
        fit["fit"]["transient_steps"] = 8
        jobs = planned(run_workflow(work, fit, "-n"))
        assert set(jobs) == {"fit_run", "fit_scaling", "report", "all"} and jobs["fit_run"] == 2
    finally:
        (work / "config.yaml").write_text(cfg)


def test_paper_preset_stands_alone():
    """With --configfile, config.yaml is not read: the planned jobs carry exactly the preset's options."""
    from scaledyn.config import load_study

    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "results-paper/runs/144M_s0/run.json",
                           "--configfile", "configs/paper.yaml"], cwd=REPO, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    study = load_study(REPO / "configs" / "paper.yaml")
    spec = re.search(r"train --spec '(\{.*?\})'", proc.stdout).group(1)
    assert spec == study.run_spec("144M_s0").to_json()
    assert '"threads": null' in spec  # config.yaml's threads: 1 would be here if it leaked
    data = re.search(r"prepare-data --stage tokenizer --options '(\{.*?\})'", proc.stdout).group(1)
    assert data == study.data.to_json()

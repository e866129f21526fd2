"""The workflow itself: lint, planning, incremental reruns (checked on `snakemake -n` summaries)."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, run_workflow


def planned(proc) -> dict[str, int]:
    stats = proc.stdout.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m.group(1) != "total"}


def test_rules_are_snakefmt_clean():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_default_and_paper_dags_plan_offline(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/paper.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    jobs = planned(proc)
    # each training job evaluates its own checkpoints; one one-step job per run covers its checkpoints
    assert jobs["train"] == 6 and "evaluate" not in jobs and jobs["zsl_dt1"] == 6
    assert jobs["prepare_slice"] == 256 and jobs["prepare_data"] == 1  # sharded preparation
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(REPO / "config.yaml"), "--directory", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    jobs = planned(proc)
    assert {"prepare_data", "train", "fit_run", "fit_scaling", "zsl_dtt", "zsl_dt1", "report"} <= set(jobs)


def test_pythia_suites_plan_offline():
    """configs/pythia.yaml trains nothing: per size one fetch, evaluation job per revision, and the
    gradient view at the listed revisions; planning touches no network."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/pythia.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    jobs = planned(proc)
    assert "train" not in jobs and jobs["suite_fetch"] == jobs["suite_evaluate"] == 5 * 20
    assert jobs["suite_gradient"] == 5 * 6 and jobs["suite_meta"] == jobs["suite_curve"] == jobs["fit_run"] == 5


def test_authors_checkpoints_plan_offline():
    """configs/zsl-authors.yaml: six sizes x 19 revisions fetched and evaluated, the Δt = 1 replay
    from the published optimizer state at six revisions of each size (no gradient view: they have
    the real step), one fit and curve per size; every suite is OLMo's unsharded format."""
    from scaledyn.config import load_study

    study = load_study(REPO / "configs" / "zsl-authors.yaml")
    assert [s.revision_name(4) for s in study.suites.values()][::5] == ["OLMo-14M-step4", "OLMo-472M-step4"]
    assert all(s.format == "olmo-unsharded" and len(s.steps) == 19 and max(s.steps) == 2**18 for s in study.suites.values())
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/zsl-authors.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    jobs = planned(proc)
    assert "train" not in jobs and "suite_gradient" not in jobs
    assert jobs["suite_fetch"] == jobs["suite_evaluate"] == 6 * 19 and jobs["suite_dt1"] == 6 * 6
    assert jobs["suite_meta"] == jobs["suite_curve"] == jobs["fit_run"] == jobs["zsl_dtt"] == 6


def test_polypythia_seeds_plan_offline():
    """configs/polypythia.yaml: five sizes x nine seeds, each a suite of 20 revisions, grouped by size."""
    from scaledyn.config import load_study

    study = load_study(REPO / "configs" / "polypythia.yaml")
    by_size = {}
    for s in study.suites.values():
        by_size.setdefault(s.size, []).append(s.seed)
    assert by_size == {f"pythia-{n}": list(range(1, 10)) for n in ("14m", "31m", "70m", "160m", "410m")}
    assert study.suites["pythia-410m-seed3"].model == "EleutherAI/pythia-410m-seed3"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/polypythia.yaml"], cwd=REPO,
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": __import__("os").environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    jobs = planned(proc)
    assert jobs["suite_fetch"] == jobs["suite_evaluate"] == 45 * 20 and jobs["fit_run"] == 45 and jobs["fit_scaling"] == 1


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
        assert jobs["train"] == 1 and jobs["zsl_dt1"] == 1 and jobs["fit_run"] == 1
        assert "prepare_data" not in jobs and jobs["zsl_dtt"] == 1
        proc = run_workflow(work, more, "-n", "-p")
        assert "tiny-1k_s0/run.json" not in proc.stdout.split("rule train:")[1].split("rule ")[0] if "rule train:" in proc.stdout else True
        fit = copy.deepcopy(base)
        fit["fit"]["transient_steps"] = 8
        jobs = planned(run_workflow(work, fit, "-n"))
        assert set(jobs) == {"fit_run", "fit_windows", "fit_scaling", "report", "all"} and jobs["fit_run"] == jobs["fit_windows"] == 2
    finally:
        (work / "config.yaml").write_text(cfg)


def test_new_evaluation_options_reevaluate_without_retraining(tiny_study, tmp_path):
    """Training jobs evaluate their checkpoints; with other evaluation options they run again on a
    copy of the finished study, resume at the last step, train nothing and rewrite the loss files."""
    import shutil

    import pyarrow.parquet as pq

    work = tmp_path / "study"
    shutil.copytree(tiny_study.root.parent, work, ignore=shutil.ignore_patterns("locks"))  # .snakemake: the params record
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["evaluate"]["token_dtype"] = "float16"
    run = tiny_study.run("tiny-1k_s0")
    log = run.train_log.read_bytes()
    weights = {s: (run.checkpoint(s) / "model.safetensors").stat().st_mtime_ns for s in (1, 64)}
    run_workflow(work, cfg, "--cores", "2", "--rerun-triggers", "params", "mtime")
    moved = type(tiny_study)(work / "results")
    assert (moved.run("tiny-1k_s0").train_log.read_bytes()) == log
    # no checkpoint was written again (copytree kept the times), and the log is the first training's
    assert {s: (moved.run("tiny-1k_s0").checkpoint(s) / "model.safetensors").stat().st_mtime_ns for s in (1, 64)} == weights
    assert "resuming from checkpoint" in moved.log("train", "tiny-1k_s0").read_text()
    for step in (1, 64):
        loss = pq.read_schema(moved.losses.partition("tokens", "tiny-1k_s0", step)).field("loss")
        assert str(loss.type) == "halffloat", step


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


def test_conda_env_installs_scaledyn_from_the_workflow_source(tmp_path):
    """Snakemake copies envs/scaledyn.yaml to .snakemake/conda/<hash>.yaml (conda resolves relative
    paths from there) and runs <hash>.post-deploy.sh with `sh`, in the new environment, from its
    working directory. Done the same way here, with a stand-in python that records its arguments."""
    import os
    import shutil

    import yaml

    env = yaml.safe_load((REPO / "envs" / "scaledyn.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert all(not p.startswith(("-e", ".", "/", "file:")) and "==" in p for p in pip)  # pinned, nothing relative
    conda = tmp_path / "work" / ".snakemake" / "conda"
    conda.mkdir(parents=True)
    shutil.copy(REPO / "envs" / "scaledyn.yaml", conda / "0123abcd.yaml")
    shutil.copy(REPO / "envs" / "scaledyn.post-deploy.sh", conda / "0123abcd.post-deploy.sh")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$PWD" > "$RECORD"; echo "$@" >> "$RECORD"\n')
    (fake / "python").chmod(0o755)
    record = tmp_path / "record"
    snakefile = (REPO / "Snakefile").read_text()
    assert 'os.environ["SCALEDYN_SOURCE"] = workflow.basedir' in snakefile  # what the script reads
    script = conda / "0123abcd.post-deploy.sh"
    shebang = script.read_text().splitlines()[0]
    interpreter = shebang[2:].split() if shebang.startswith("#!") else ["sh"]  # as Snakemake chooses it
    subprocess.run([*interpreter, str(script)], cwd=tmp_path / "work", check=True,
                   env={"PATH": f"{fake}:{os.environ['PATH']}", "SCALEDYN_SOURCE": str(REPO), "RECORD": str(record)})
    cwd, args = record.read_text().splitlines()
    target = args.split()[-1]
    assert args.startswith("-m pip install --no-deps") and cwd == str(tmp_path / "work")
    assert Path(target) == REPO and (Path(target) / "pyproject.toml").exists()
    missing = subprocess.run([*interpreter, str(script)], cwd=tmp_path / "work", capture_output=True,
                             text=True, env={"PATH": f"{fake}:{os.environ['PATH']}", "RECORD": str(record)})
    assert missing.returncode != 0 and "SCALEDYN_SOURCE" in missing.stderr


@pytest.mark.parametrize("control", ["warmup-20", "warmup-200", "warmup-600", "constant", "seeds"])
def test_controls_change_only_what_they_control(control):
    """A control is the default study with one thing changed; anything else that drifts from
    config.yaml would confound the comparison."""
    from scaledyn.config import load_study

    default, ctrl = (yaml.safe_load(p.read_text()) for p in (REPO / "config.yaml", REPO / "configs" / "controls" / f"{control}.yaml"))
    load_study(REPO / "configs" / "controls" / f"{control}.yaml")
    changed = {k for k in default.keys() | ctrl.keys() if default.get(k) != ctrl.get(k)}
    assert changed <= {"study", "results", "seeds", "model", "train"}
    assert {k for k in default["train"] if default["train"][k] != ctrl["train"].get(k)} <= {"schedule"}
    if control == "seeds":
        assert len(ctrl["seeds"]) >= 3 and ctrl["model"] == default["model"]
    else:
        assert ctrl["seeds"] == default["seeds"] and set(ctrl["model"]["sizes"]) <= set(default["model"]["sizes"])


def _snakemake_only_env(root: Path) -> Path:
    """A virtual environment that sees Snakemake and its dependencies and nothing else (no numpy,
    torch or scaledyn), built offline from the distributions installed here: each one's top-level
    files are linked into one folder that a .pth puts on the path. Returns its python."""
    import importlib.metadata as md
    import venv

    from packaging.requirements import Requirement

    seen, todo = {}, ["snakemake"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen[key] = dist = md.distribution(name)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    site = root / "site"
    site.mkdir(parents=True)
    for dist in seen.values():
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "only-snakemake.pth").write_text(f"{site}\n")
    return python


def test_workflow_parses_with_only_snakemake(tmp_path):
    """The usual set-up: Snakemake in its own environment, the package in the jobs' (envs/ under
    --sdm conda). The Snakefile imports the checkout's src/ and parses without numpy or torch; under
    --sdm conda the checks of the jobs' environment (data.packages installed) are left to the jobs."""
    import json
    import os

    python = _snakemake_only_env(tmp_path / "smk")
    probe = subprocess.run([python, "-c", "import snakemake, yaml, jsonschema\nimport numpy"], capture_output=True, text=True)
    assert "No module named 'numpy'" in probe.stderr  # only Snakemake is there
    bin_ = tmp_path / "bin"  # conda as Snakemake's dry run queries it (no environment is built)
    bin_.mkdir()
    info = {"conda_version": "24.7.1", "envs_dirs": [], "platform": "linux-64", "conda_prefix": "/opt/conda",
            "root_prefix": "/opt/conda"}
    (bin_ / "conda").write_text(f"""#!/bin/sh
case "$*" in
  --version) echo 'conda 24.7.1';;
  'info --json') echo '{json.dumps(info)}';;
  'config --get channel_priority --json') echo '{{"get": {{"channel_priority": "strict"}}}}';;
  *) echo "unexpected: conda $*" >&2; exit 1;;
esac
""")
    (bin_ / "conda").chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for args in (["--configfile", str(REPO / "config.yaml")],
                 ["--sdm", "conda", "--configfile", str(REPO / "configs" / "cpu-long.yaml")]):
        proc = subprocess.run([python, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"),
                               "-d", str(tmp_path / "work"), *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert {"prepare_data", "train", "report"} <= set(planned(proc))
    # without --sdm conda the jobs run here, so a corpus package missing here is refused at parse time
    proc = subprocess.run([python, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"), "-d",
                           str(tmp_path / "work"), "--configfile", str(REPO / "configs" / "cpu-long.yaml")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "data.packages[0]: 'transformers' is not an installed package" in proc.stdout + proc.stderr
    assert os.environ.get("PATH")  # the test's own environment is untouched

"""Bad input and bad luck: unsafe names, pickles in checkpoints, non-finite numbers, damaged logs,
two trainers on one run, killed writers, permissions, full and read-only disks."""

import ast
import copy
import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
import torch
from conftest import REPO, TINY, log_rows, run_workflow
from safetensors.torch import load_file

from scaledyn.analysis.evaluate import evaluate_checkpoint
from scaledyn.config import ConfigError, load_study
from scaledyn.errors import DataError, Preempted
from scaledyn.layout import Layout, LossesPaths, RunPaths
from scaledyn.train import checkpoint
from scaledyn.train.loop import read_log, train

PWNED = Path("/tmp/scaledyn-pwned")


def spec_for(tiny_config, tiny_data, run_dir, **over):
    spec = load_study(tiny_config).run_spec("tiny-1k_s0")
    return dataclasses.replace(spec, data_dir=str(tiny_data), run_dir=str(run_dir), **over)


def scaledyn(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "scaledyn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})



class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs a shell command."""

    def __reduce__(self):
        return os.system, (f"touch {PWNED}",)


# ----------------------------------------------------------------------------- 1-4: names and paths


@pytest.mark.parametrize("name", [";touch /tmp/scaledyn-pwned #", "../../evil", "a(b", "x=y", "a%20b", "a b", "-rf"])
def test_unsafe_size_names_are_refused_before_any_job(tmp_path, name):
    cfg = {"model": {"sizes": [name], "custom": {name: {"d_model": 16, "n_layers": 1, "n_heads": 2}}}}
    with pytest.raises(ConfigError, match=r"config: model\.(sizes\.0|custom)"):
        load_study(cfg)
    wf = {**copy.deepcopy(TINY), **cfg}
    proc = run_workflow(tmp_path, wf, "-n", check=False)
    assert proc.returncode != 0 and "does not match" in proc.stdout + proc.stderr
    assert not PWNED.exists() and not (tmp_path / "results").exists()


def test_every_rule_quotes_every_interpolation():
    """Snakemake pastes {...} into a shell line verbatim unless it is quoted with :q."""
    shells = 0
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.findall(r"shell:\n((?:[ \t]+\".*\"\n?)+)", smk.read_text()):
            shells += 1
            for field in re.findall(r"\{([^{}]+)\}", block):
                assert field.endswith(":q"), f"{smk.name}: {{{field}}} is not quoted"
    assert shells >= 9


def test_results_path_with_spaces_and_shell_syntax(tmp_path):
    """`results` may be any path: nothing in it is run by a shell, and spaces survive."""
    cfg = copy.deepcopy(TINY)
    cfg.update(results="my results $(touch /tmp/scaledyn-pwned)")
    cfg["model"]["sizes"] = ["tiny-1k"]
    cfg["train"]["steps"] = 16  # the fewest steps that leave the fit its 7 points after the transient
    cfg["zsl"]["dt1_steps"] = [16]
    run = Layout(cfg["results"]).run("tiny-1k_s0")
    run_workflow(tmp_path, cfg, "--cores", "2", str(run.run_json))
    assert (tmp_path / run.run_json).exists() and not PWNED.exists()


# ----------------------------------------------------------------------------- 5: no pickle from disk


def test_no_torch_load_allows_pickles():
    for f in (REPO / "src" / "scaledyn").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(node.func.value, "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{f.name}:{node.lineno}: torch.load without weights_only=True"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_config, tiny_data):
    spec = spec_for(tiny_config, tiny_data, tmp_path_factory.mktemp("short") / "run", steps=16,
                    checkpoint_steps=(8, 16), optimizer_steps=None, flush_every=1)
    train(spec)
    return spec


def copy_run(spec, dest):
    shutil.copytree(spec.run_dir, dest)
    return dataclasses.replace(spec, run_dir=str(dest))


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng.pt"])
def test_pickle_payloads_in_checkpoints_are_refused(short_run, tmp_path, victim):
    PWNED.unlink(missing_ok=True)
    spec = copy_run(short_run, tmp_path / "run")
    ckpt = RunPaths(spec.run_dir).checkpoint(16)

    def poison():
        with open(ckpt / victim, "wb") as f:
            pickle.dump({"optimizer": Payload(), "torch": Payload()}, f)

    poison()
    longer = dataclasses.replace(spec, steps=20, checkpoint_steps=(8, 16, 20))
    with pytest.warns(UserWarning, match=rf"skipping damaged checkpoint .*step16.*{victim}.*refused"):
        train(longer)  # resumes from step 8 instead
    assert not PWNED.exists()
    poison()  # the resumed run wrote step 16 afresh
    out = scaledyn("zsl-dt1", "--run-dir", spec.run_dir, "--step", 16, "--data", spec.data_dir, "--out",
                   tmp_path / "t.parquet", "--changes", tmp_path / "changes")
    assert out.returncode == 1 and victim in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not PWNED.exists()


def test_checkpoints_of_the_previous_format_still_resume(short_run, tmp_path):
    """Before: rng.pt held numpy's state tuple and optimizer.pt the LambdaLR state beside AdamW's."""
    spec = copy_run(short_run, tmp_path / "run")
    ckpt = RunPaths(spec.run_dir).checkpoint(16)
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.save({**opt, "scheduler": {"base_lrs": [spec.lr] * 2, "last_epoch": 16, "_step_count": 17, "lr_lambdas": [None]}},
               ckpt / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}, ckpt / "rng.pt")
    ref = copy_run(short_run, tmp_path / "ref")
    shutil.rmtree(RunPaths(ref.run_dir).checkpoint(16))  # reference: continue from 8
    for s in (spec, ref):
        train(dataclasses.replace(s, steps=20, checkpoint_steps=(8, 16, 20)))
    assert log_rows(RunPaths(spec.run_dir).train_log) == log_rows(RunPaths(ref.run_dir).train_log)


# ----------------------------------------------------------------------------- 6-8: finite numbers


@pytest.mark.parametrize("override, key", [({"train": {"lr": float("inf")}}, "train.lr"),
                                           ({"train": {"lr": float("nan")}}, "train.lr"),
                                           ({"train": {"grad_clip": float("inf")}}, "train.grad_clip"),
                                           ({"train": {"optimizer": {"betas": [0.9, float("nan")]}}}, "train.optimizer.betas[1]"),
                                           ({"fit": {"alpha": float("nan")}}, "fit.alpha")])
def test_non_finite_config_numbers_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"config: {re.escape(key)}: (inf|nan) is not a finite number"):
        load_study(override)


def test_flipped_bytes_in_weights_are_refused_by_evaluate(short_run, tmp_path):
    spec = copy_run(short_run, tmp_path / "run")
    weights = RunPaths(spec.run_dir).checkpoint(8) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4000:-3000] = b"\xff" * 1000  # same size; these floats are now NaN
    weights.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=r"step8: .* per-token losses .* not finite"):
        evaluate_checkpoint(spec.run_dir, 8, spec.data_dir, tmp_path / "losses")
    assert not list((tmp_path / "losses").rglob("*.parquet"))


def test_divergence_stops_training_with_its_own_exit_code(tiny_config, tiny_data, tmp_path):
    spec = spec_for(tiny_config, tiny_data, tmp_path / "run", steps=40, lr=100.0, grad_clip=None, flush_every=1,
                    checkpoint_steps=(4, 8, 40), optimizer_steps=None)
    out = scaledyn("train", "--spec", spec.to_json())
    assert out.returncode == 65, out.stderr[-2000:]
    assert re.search(r"non-finite .* at step \d+ .* last good checkpoint: step 4", out.stderr)
    paths = RunPaths(spec.run_dir)
    assert checkpoint.complete_steps(paths) == [4] and json.loads(paths.diverged.read_text())["last_checkpoint"] == 4
    rows = read_log(paths.live_log)
    assert all(np.isfinite(float(r["loss"])) for r in rows) and len(rows) >= 4
    t0 = time.time()
    again = scaledyn("train", "--spec", spec.to_json())  # a retry would diverge again: refused at once
    assert again.returncode == 65 and "diverged before" in again.stderr and time.time() - t0 < 60


# ----------------------------------------------------------------------------- 9: durable logs


def test_log_is_fsynced_before_a_checkpoint_is_complete(tiny_config, tiny_data, tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def spy(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    train(spec_for(tiny_config, tiny_data, tmp_path / "run", steps=8, checkpoint_steps=(4, 8), flush_every=100))
    log_syncs = [i for i, p in enumerate(calls) if p.endswith("state/train_log.csv")]
    complete = [i for i, p in enumerate(calls) if "COMPLETE" in p or checkpoint.STATE in p]
    assert log_syncs and complete and log_syncs[0] < complete[0]


@pytest.mark.parametrize("damage", ["short", "torn", "nul", "fake"])
def test_damaged_log_is_repaired_on_resume(short_run, tmp_path, damage):
    """After a node crash the log may end before the newest checkpoint, or end in garbage."""
    spec = copy_run(short_run, tmp_path / "run")
    paths = RunPaths(spec.run_dir)
    good = paths.live_log.read_text().splitlines(keepends=True)
    ref = log_rows(paths.train_log)
    keep = "".join(good[:13])  # header + steps 1..12: intact through 12, before checkpoint 16
    tail = {"short": "", "torn": "13,416,5.4", "nul": "\x00" * 64, "fake": "13,,,,,\n14,448,5.1,0.003,1.0,100\n"}[damage]
    paths.live_log.write_text(keep + tail)
    assert len(read_log(paths.live_log)) == 12
    train(spec)
    assert log_rows(paths.train_log) == ref  # resumed from checkpoint 8: steps 9..16 logged again, nothing twice


# ----------------------------------------------------------------------------- 10: one trainer per run


def test_second_trainer_fails_at_once_naming_the_holder(tiny_config, tiny_data, tmp_path):
    spec = spec_for(tiny_config, tiny_data, tmp_path / "run", steps=100000, checkpoint_steps=(100000,), flush_every=1,
                    allow_repeat=True)
    first = subprocess.Popen([sys.executable, "-m", "scaledyn", "train", "--spec", spec.to_json()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        paths = RunPaths(spec.run_dir)
        t0 = time.time()
        while len(read_log(paths.live_log)) < 20:
            assert time.time() - t0 < 120 and first.poll() is None
            time.sleep(0.1)
        second = scaledyn("train", "--spec", spec.to_json(), timeout=120)
        assert second.returncode == 1 and f"pid {first.pid}" in second.stderr and "already being trained" in second.stderr
        first.send_signal(signal.SIGTERM)  # pre-empt the first: it saves and exits 75
        assert first.wait(timeout=120) == Preempted.exit_code, first.stderr.read()[-2000:]
    finally:
        first.kill()
    saved = max(checkpoint.complete_steps(paths))
    assert len(read_log(paths.live_log)) == saved == len(paths.live_log.read_text().splitlines()) - 1  # one writer


# ----------------------------------------------------------------------------- 11: killed writers


def read_everywhere(dataset: Path) -> set[int]:
    """Row counts from pandas, pyarrow, DuckDB and Polars (directory scans and ** globs)."""
    counts = {len(pd.read_parquet(dataset)), ds.dataset(dataset, format="parquet").count_rows(),
              duckdb.sql(f"SELECT count(*) FROM read_parquet('{dataset}/**/*')").fetchall()[0][0],
              pl.scan_parquet(f"{dataset}/**/*.parquet").select(pl.len()).collect().item(),
              pl.scan_parquet(dataset).select(pl.len()).collect().item()}
    return counts


def test_kill_9_training_and_evaluation_then_resume(short_run, tmp_path):
    """kill -9 at random moments (several inside checkpoint writes), resume: the log is exact, the
    final weights are identical, and every reader opens the dataset."""
    ref_weights = load_file(RunPaths(short_run.run_dir).checkpoint(16) / "model.safetensors")
    ref_log = log_rows(RunPaths(short_run.run_dir).train_log)
    spec = dataclasses.replace(short_run, run_dir=str(tmp_path / "run"), checkpoint_steps=(2, 4, 6, 8, 10, 12, 14, 16))
    rng = random.Random(7)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-m", "scaledyn", "train", "--spec", spec.to_json()], stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(rng.uniform(1.5, 4.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
    train(spec)
    paths = RunPaths(spec.run_dir)
    assert log_rows(paths.train_log) == ref_log
    final = load_file(paths.checkpoint(16) / "model.safetensors")
    assert all(torch.equal(final[k], ref_weights[k]) for k in ref_weights)
    assert not [p for p in paths.checkpoints.iterdir() if p.name.startswith(".")]  # no stale temporaries
    out = LossesPaths(tmp_path / "losses")
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "scaledyn", "evaluate", "--run-dir", spec.run_dir, "--step", "16",
                              "--data", spec.data_dir, "--out", out.dir], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
    for step in (8, 16):
        evaluate_checkpoint(spec.run_dir, step, spec.data_dir, out.dir, force=True)
    for g in ("sequences", "tokens"):
        counts = read_everywhere(out.dataset(g))
        assert len(counts) == 1, counts  # every reader agrees
    assert not list(out.dir.rglob("*.tmp"))


def test_stale_temporaries_are_removed(short_run, tmp_path):
    spec = copy_run(short_run, tmp_path / "run")
    paths = RunPaths(spec.run_dir)
    stale = paths.checkpoints / ".step16.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    train(dataclasses.replace(spec, steps=17, checkpoint_steps=(8, 16, 17)))
    assert not stale.exists()
    out = LossesPaths(tmp_path / "losses")
    leftover = out.dir / ".staging" / "tokens.tiny-1k_s0.step_8.xyz.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"PAR1 half a file")
    evaluate_checkpoint(spec.run_dir, 8, spec.data_dir, out.dir)
    assert not leftover.exists()


# ----------------------------------------------------------------------------- 12: permissions


def test_outputs_follow_the_umask(tiny_config, tiny_data, tmp_path):
    spec = spec_for(tiny_config, tiny_data, tmp_path / "run", steps=2, checkpoint_steps=(2,))
    code = ("import os, sys; os.umask(0o002); from scaledyn.cli import main; main(sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", code, "train", "--spec", spec.to_json()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = RunPaths(spec.run_dir)
    assert (paths.checkpoint(2).stat().st_mode & 0o777) == 0o775
    for f in (paths.run_json, paths.train_log, paths.marker(2), *paths.checkpoint(2).iterdir()):
        assert (f.stat().st_mode & 0o777) == 0o664, f  # the weights too (safetensors writes them 0600)
    assert (paths.checkpoint(2) / "model.safetensors").exists()


# ----------------------------------------------------------------------------- 13: one-line errors


def mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


@pytest.mark.parametrize("options, reason", [("size=64k", "No space left on device"), ("size=1m,ro", "Read-only file system")])
def test_full_or_read_only_disk_is_one_line(short_run, tmp_path, options, reason):
    where = tmp_path / "mnt"
    if not mount_tmpfs(where, options):
        pytest.skip("mounting a tmpfs needs root")
    try:
        if "ro" not in options:
            subprocess.run(["dd", "if=/dev/zero", f"of={where / 'filler'}", "bs=4k"], capture_output=True)  # until full
        out = scaledyn("evaluate", "--run-dir", short_run.run_dir, "--step", 16, "--data", short_run.data_dir, "--out", where)
        assert out.returncode == 1 and reason in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        if "ro" not in options:
            (where / "filler").unlink()
            subprocess.run(["dd", "if=/dev/zero", f"of={where / 'filler'}", "bs=1k", "count=40"], capture_output=True)
            spec = dataclasses.replace(short_run, run_dir=str(where / "run"), steps=4, checkpoint_steps=(2, 4))
            out = scaledyn("train", "--spec", spec.to_json())
            assert out.returncode == 1 and reason in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    finally:
        subprocess.run(["umount", str(where)])


def test_damaged_checkpoint_state_is_one_line(short_run, tmp_path):
    spec = copy_run(short_run, tmp_path / "run")
    ckpt = RunPaths(spec.run_dir).checkpoint(16)
    torch.save({"optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}, ckpt / "optimizer.pt")
    out = scaledyn("zsl-dt1", "--run-dir", spec.run_dir, "--step", 16, "--data", spec.data_dir, "--out", tmp_path / "t.parquet",
                   "--changes", tmp_path / "c")
    assert out.returncode == 1 and "optimizer.pt does not fit" in out.stderr and "Traceback" not in out.stderr
    (ckpt / checkpoint.STATE).write_text("{}")
    out = scaledyn("evaluate", "--run-dir", spec.run_dir, "--step", 16, "--data", spec.data_dir, "--out", tmp_path / "l")
    assert out.returncode == 1 and "Traceback" not in out.stderr and checkpoint.STATE in out.stderr
    with pytest.warns(UserWarning, match=f"step16.*{checkpoint.STATE} lacks"):
        train(dataclasses.replace(spec, steps=17, checkpoint_steps=(8, 16, 17)))


@pytest.mark.parametrize("args, message", [(["train", "--spec", "{not json"], "--spec: not a run spec"),
                                           (["train", "--spec", '{"name": "x"}'], "--spec: not a run spec"),
                                           (["prepare-data", "--options", "[1, 2", "--out", "/tmp/x"], "--options: not valid JSON"),
                                           (["fit-curve", "c.csv", "--out", "f.json", "--options", '{"bootstrap": 3}'],
                                            "config: fit.bootstrap: 3 is less than the minimum of 20")])
def test_bad_json_arguments_are_one_line(args, message):
    out = scaledyn(*args)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("args, message", [
    (["fit-curve", "{curve}", "--out", "f.json", "--alpha", "2"], "--alpha: 2.0 is greater than the maximum of 0.5"),
    (["fit-curve", "{curve}", "--out", "f.json", "--transient-steps", "-50"], "--transient-steps: -50.0 is less than"),
    (["fit-curve", "{curve}", "--out", "f.json", "--seed", "-3"], "--seed: -3 is less than the minimum of 0"),
    (["fit-curve", "{curve}", "--out", "f.json", "--bootstrap", "19"], "--bootstrap: 19 is less than the minimum of 20"),
    (["fit-curve", "{curve}", "--out", "f.json", "--alpha", "0.01", "--bootstrap", "50"],
     "--bootstrap: 50 draws can never give p < alpha = 0.01"),
    (["launch", "--gpus", "-1", "--", "train", "--help"], "--gpus: must be 0 (CPU) or more, got -1"),
    (["launch", "--nodes", "0", "--", "train", "--help"], "--nodes: must be at least 1, got 0")])
def test_flags_are_checked_like_their_config_keys(tmp_path, args, message):
    curve = tmp_path / "c.csv"
    curve.write_text("step,loss\n" + "".join(f"{t},{3 * t ** -0.1:.6f}\n" for t in range(1, 400)))
    out = scaledyn(*[a.format(curve=curve) for a in args])
    assert out.returncode != 0 and message in out.stderr.strip().splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr


def test_fit_windows_on_a_curve_too_short_for_a_window_says_so(tmp_path):
    (tmp_path / "one.csv").write_text("step,loss\n1,2.0\n")
    out = scaledyn("fit-windows", tmp_path / "one.csv", "--out", tmp_path / "w.csv")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    w = pd.read_csv(tmp_path / "w.csv")
    assert len(w) == 6 and set(w["verdict"]) == {"unfit"} and "no logged step in this window" in set(w["note"])


@pytest.mark.parametrize("template", ["../outside/step{step}", "/etc/step{step}", "a/../../step{step}", "step"])
def test_revision_templates_that_leave_the_suite_are_refused(template):
    suite = {"model": "EleutherAI/pythia-70m", "revision": template, "steps": [1000, 2000], "tokens_per_step": 2048}
    with pytest.raises(ConfigError, match=r"suites\.p\.revision: .* is not allowed: Revision name template"):
        load_study({"suites": {"p": suite}, "data": {"tokenizer": {"kind": "pretrained", "name": "x"}}})


def test_a_local_revision_that_links_outside_its_suite_is_refused(tmp_path):
    from scaledyn.analysis.options import Suite
    from scaledyn.analysis.revisions import resolve
    from scaledyn.errors import SuiteError

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "step1").symlink_to(tmp_path / "outside")
    suite = Suite("p", str(tmp_path / "suite"), "step{step}", (1,), 2048, None, None, 0, (), (), "auto", "p")
    with pytest.raises(SuiteError, match=r"suites\.p\.revision: 'step1' resolves to .*outside, outside"):
        resolve(suite, 1)


def test_a_run_name_read_from_a_checkpoint_never_becomes_a_path_outside(short_run, tmp_path):
    spec = copy_run(short_run, tmp_path / "run")
    state_file = RunPaths(spec.run_dir).checkpoint(8) / checkpoint.STATE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "run": "../../../evil"}))
    with pytest.raises(DataError, match=r"run name '../../../evil' is not a safe name"):
        evaluate_checkpoint(spec.run_dir, 8, spec.data_dir, tmp_path / "out" / "losses")
    assert not list(tmp_path.rglob("evil*"))


def test_preempted_exit_code_is_distinct_from_divergence():
    assert Preempted.exit_code == 75 and checkpoint.CheckpointError.exit_code == 1

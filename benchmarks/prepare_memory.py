"""Peak memory of data preparation on large plain-text corpora, against the default corpus.

    python -m benchmarks.prepare_memory [--big-gb 1.0] [--files 20 --file-mb 13] [--readme docs/benchmarks.md]

Each case runs the workflow's preparation jobs (`scaledyn prepare-data --stage tokenizer`, one
`--stage slice` per slice, `--stage index`) as separate processes, as Snakemake runs them, and
reports the largest peak resident set of any of them: the default study's corpus (config.yaml),
`--files` text files of `--file-mb` MB each, and one text file of `--big-gb` GB. The text is the
default corpus's own (its documents, paragraphs separated by blank lines), repeated to size, so
tokenization work per byte is alike. Preparation streams every file (data.files.split), so memory
should not grow with a file's size: the ratio to the default corpus is the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import publish
from scaledyn.config import load_study
from scaledyn.data.sources import Source

PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident set (MB) of a command, from the kernel's accounting of a waited child."""
    out = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args[:6])} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.split()[-1]) / 1024


def prepare_peak(options, out: Path) -> tuple[float, float]:
    """(peak MB over the preparation jobs, wall seconds)."""
    cmd = [sys.executable, "-m", "scaledyn", "prepare-data", "--options", options.to_json(), "--out", str(out)]
    t0 = time.time()
    peaks = [peak_rss_mb([*cmd, "--stage", "tokenizer"])]
    peaks += [peak_rss_mb([*cmd, "--stage", "slice", "--slice", str(k)]) for k in range(Source(options).slices())]
    peaks.append(peak_rss_mb([*cmd, "--stage", "index"]))
    return max(peaks), time.time() - t0


def write_text(path: Path, docs: list[str], size: int) -> None:
    """`size` bytes of the documents, one paragraph per document, repeated in order."""
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            for d in docs:
                block = d.strip().replace("\n\n", "\n") + "\n\n"
                f.write(block)
                written += len(block.encode())
                if written >= size:
                    break


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--file-mb", type=float, default=13)
    ap.add_argument("--big-gb", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--readme", type=Path, default=None, help="write the table into this file's prepare-memory block")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-memory-"))
    study = load_study("config.yaml")
    default = study.data
    source = Source(default)
    docs = [d for k in range(source.slices()) for d in source.documents(k) if d.strip()][:2000]
    (work / "many").mkdir(parents=True, exist_ok=True)
    for i in range(args.files):
        write_text(work / "many" / f"part{i:02d}.txt", docs[i::args.files] or docs, int(args.file_mb * 1e6))
    write_text(work / "big.txt", docs, int(args.big_gb * 1e9))
    cases = {
        "default corpus (config.yaml)": default,
        f"{args.files} text files of {args.file_mb:g} MB": load_study(
            "config.yaml", {"data": {"source": "files", "files": {"paths": [str(work / "many" / "*.txt")]}}}).data,
        f"one text file of {args.big_gb:g} GB": load_study(
            "config.yaml", {"data": {"source": "files", "files": {"paths": [str(work / "big.txt")]}}}).data,
    }
    rows = []
    for name, options in cases.items():
        peak, wall = prepare_peak(options, work / f"out-{len(rows)}")
        rows.append({"case": name, "peak_mb": round(peak, 1), "wall_s": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["peak_mb"]
    for r in rows:
        r["ratio"] = r["peak_mb"] / base
    table = pd.DataFrame(rows)
    text = (f"Peak resident memory of the preparation jobs (largest of tokenizer, slices, index; "
            f"{os.cpu_count()} CPUs; `python -m benchmarks.prepare_memory`):\n\n"
            + table.rename(columns={"peak_mb": "peak RSS (MB)", "ratio": "× default corpus", "wall_s": "wall (s)"})
            .to_markdown(index=False, floatfmt=".2f") + "\n")
    publish(text, table, None, args.readme, "prepare-memory")
    print(f"(scratch files in {work})")


if __name__ == "__main__":
    main()

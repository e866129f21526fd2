"""Performance benchmarks and the calibration of the break test; both write their tables into
Markdown files between markers, so the numbers in README.md and docs/ come from runs."""

from pathlib import Path


def replace_block(path: Path, name: str, text: str) -> None:
    """Replace what lies between the <!-- name:start --> and <!-- name:end --> markers of a Markdown file."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if start not in doc or end not in doc:
        raise SystemExit(f"{path}: no {start} ... {end} block to replace")
    head, rest = doc.split(start, 1)
    path.write_text(head + start + "\n" + text + rest[rest.index(end):])


def publish(text: str, table, csv: Path | None, readme: Path | None, block: str) -> None:
    """Print a calibration's tables, write its rows to `csv` and its tables into `readme`'s block."""
    print(text)
    if csv:
        table.to_csv(csv, index=False)
    if readme:
        replace_block(readme, block, text)

"""Screenshots of a finished study's report as a browser shows it: docs/screenshots/.

    python -m benchmarks.screenshots [--results results] [--out docs/screenshots] [--width 1400]

Headless Chromium (Debian's `chromium`) renders the summary page, the fit table page and each
figure (the interventions' effects too, where the study has them), at a laptop's width, and
reports any page wider than the window (a table cut off at the edge). Run it on a fresh study so
the pictures show the current code's report.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from scaledyn.layout import Layout, ReportPaths

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Written into the page's DOM by a script, read back with --dump-dom: the widest content of the page
# or of a scrolling box in it (a table in a box that scrolls sideways is cut off at the box's edge).
MEASURE = ("<script>window.addEventListener('load', () => { let w = document.documentElement.scrollWidth; "
           "for (const e of document.querySelectorAll('.wide')) w = Math.max(w, window.innerWidth + e.scrollWidth "
           "- e.clientWidth); document.body.insertAdjacentHTML('beforeend', '<p id=\"measured\">' + w + '</p>'); })"
           "</script>")


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        raise SystemExit("no headless browser: install Debian's chromium (apt-get install chromium)")
    return found


def _run(args: list[str]) -> str:
    return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def content_width(page: Path, width: int) -> int:
    """The rendered width (px) of a page in a window `width` px wide: over `width`, something is cut off."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
        dom = _run([f"--window-size={width},900", "--virtual-time-budget=2000", "--dump-dom", probe.as_uri()])
    return int(dom.rsplit('<p id="measured">', 1)[1].split("<")[0])


def screenshot(page: Path, out: Path, width: int, height: int) -> None:
    _run([f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args(argv)
    report = Layout(args.results).report
    args.out.mkdir(parents=True, exist_ok=True)
    for page, name, height in ((report.summary_html, "summary", 3200), (report.table("html"), "fit_table", 700)):
        wide = content_width(page.resolve(), args.width)
        screenshot(page.resolve(), args.out / f"{name}.png", args.width, height)
        print(f"{name}: {wide} px wide in a {args.width} px window" + (" — CUT OFF" if wide > args.width else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [*ReportPaths.FIGURES, *(["effects"] if report.figure("effects").exists() else [])]:
            page = Path(tmp) / f"{name}.html"
            page.write_text(f'<html><body style="margin:0"><img src="{report.figure(name).resolve().as_uri()}" '
                            'style="max-width:100%"></body></html>')
            screenshot(page, args.out / f"{name}.png", args.width, 760)
            print(f"{name}: {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Check that a report.html renders in headless Chromium with every <img> actually decoded.

Usage: python scripts/check_report_html.py path/to/report.html [--screenshot out.png] [--chromium BIN]

Why a browser: a data URI can be well-formed base64 yet not a decodable PNG, and only a real
renderer tells. The script loads a *copy* of the report with a tiny inline script appended that,
once the page has loaded, stamps each image with ``data-decoded="1"`` when ``naturalWidth > 0``;
``--dump-dom`` then prints the resulting DOM, which is parsed here. Every network feature is
switched off, so a report that silently needs the network fails the check instead of hiding it.
Exit status: 0 all images decoded, 1 some did not (or none found), 2 Chromium missing or failed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """
<script>
window.addEventListener("load", function () {
  for (const img of document.images) {
    img.setAttribute("data-decoded", img.complete && img.naturalWidth > 0 ? "1" : "0");
    img.setAttribute("data-natural-width", String(img.naturalWidth));
  }
  document.body.setAttribute("data-probe", "done");
});
</script>
"""
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--virtual-time-budget=10000",  # lets the load event (and the probe) run before the dump
]


def find_chromium(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome", "chrome"]
    return next((path for name in candidates if name and (path := shutil.which(name))), None)


def run_chromium(binary: str, page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *mode, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def image_states(dom: str) -> list[tuple[str, str, str]]:
    """(id or alt, decoded flag, naturalWidth) for each <img> in the dumped DOM."""
    states = []
    for tag in re.findall(r"<img\b[^>]*>", dom):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        states.append((attrs.get("id") or attrs.get("alt", "?"), attrs.get("data-decoded", "missing"),
                       attrs.get("data-natural-width", "?")))
    return states


def check(report: Path, screenshot: Path | None, binary: str) -> int:
    html = report.read_text(encoding="utf-8")
    probed = html.replace("</body>", PROBE + "</body>") if "</body>" in html else html + PROBE
    with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(probed, encoding="utf-8")
        dump = run_chromium(binary, page, Path(tmp) / "profile", "--dump-dom")
        if dump.returncode != 0 or 'data-probe="done"' not in dump.stdout:
            print(f"chromium did not render the page (rc={dump.returncode}): {dump.stderr.strip()[-500:]}")
            return 2
        if screenshot is not None:
            shot = run_chromium(binary, report.resolve(), Path(tmp) / "profile", "--window-size=1280,3000",
                                f"--screenshot={screenshot.resolve()}")
            print(f"screenshot: {screenshot} (rc={shot.returncode})")
    states = image_states(dump.stdout)
    for name, decoded, width in states:
        print(f"{'ok ' if decoded == '1' else 'BAD'} <img {name}> naturalWidth={width}")
    if not states:
        print("no <img> found in the rendered report")
        return 1
    return 0 if all(decoded == "1" for _, decoded, _ in states) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    binary = find_chromium(args.chromium)
    if binary is None:
        print("chromium not found (apt-get install chromium)")
        return 2
    return check(args.report, args.screenshot, binary)


if __name__ == "__main__":
    sys.exit(main())

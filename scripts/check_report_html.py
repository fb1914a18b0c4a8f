#!/usr/bin/env python
"""Check a report.html in headless Chromium: every <img> decodes, nothing overflows a 1280 px screen,
the print layout fits an A4 page, and the page prints to a PDF.

Usage: python scripts/check_report_html.py path/to/report.html [--screenshot out.png] [--pdf out.pdf]
       [--chromium BIN] [--width 1280]

Why a browser: a data URI can be well-formed base64 yet not a decodable PNG, and only a real renderer
tells; likewise only layout tells whether a table is wider than the screen. The script loads a *copy*
of the report with a small inline script appended that, once the page has loaded, stamps each image
with ``data-decoded="1"`` when ``naturalWidth > 0`` and the body with the document's scroll width and
the elements that stick out of the viewport; ``--dump-dom`` prints the resulting DOM, parsed here.
Two layouts are checked: the screen at ``--width`` px, and the print layout (the report's ``@media
print`` rules forced on) at A4's printable width, 186 mm = 703 px. Every network feature is switched
off, so a report that silently needs the network fails instead of hiding it.
Exit status: 0 all checks pass, 1 a check failed (or no image found), 2 Chromium missing or failed.
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
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.right > width + 1 && box.width > 0) {
      wide.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + ":" + Math.round(box.right));
    }
  }
  document.body.setAttribute("data-viewport", String(width));
  document.body.setAttribute("data-scroll-width", String(document.documentElement.scrollWidth));
  document.body.setAttribute("data-overflowing", wide.slice(0, 8).join(" "));
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
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # lets the load event (and the probe) run before the dump
]
A4_PRINTABLE_PX = 703  # (210 mm - 2 x 12 mm @page margins) at 96 px per inch


def find_chromium(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome", "chrome"]
    return next((path for name in candidates if name and (path := shutil.which(name))), None)


def run_chromium(binary: str, page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    command = [binary, *FLAGS, f"--user-data-dir={profile}", *mode, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def image_states(dom: str) -> list[tuple[str, str, str]]:
    """(id or alt, decoded flag, naturalWidth) for each <img> in the dumped DOM."""
    states = []
    for tag in re.findall(r"<img\b[^>]*>", dom):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        states.append((attrs.get("id") or attrs.get("alt", "?"), attrs.get("data-decoded", "missing"),
                       attrs.get("data-natural-width", "?")))
    return states


def body_attrs(dom: str) -> dict[str, str]:
    tag = re.search(r"<body\b[^>]*>", dom)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(0))) if tag else {}


def print_layout(html: str) -> str:
    """The report with its print rules applied on screen (``@media print`` -> ``@media all``)."""
    return html.replace("@media print", "@media all")


def render(binary: str, html: str, tmp: Path, name: str, width: int) -> str | None:
    probed = html.replace("</body>", PROBE + "</body>") if "</body>" in html else html + PROBE
    page = tmp / f"{name}.html"
    page.write_text(probed, encoding="utf-8")
    dump = run_chromium(binary, page, tmp / f"profile-{name}", f"--window-size={width},1000", "--dump-dom")
    if dump.returncode != 0 or 'data-probe="done"' not in dump.stdout:
        print(f"chromium did not render the page (rc={dump.returncode}): {dump.stderr.strip()[-500:]}")
        return None
    return dump.stdout


def overflow_ok(dom: str, label: str) -> bool:
    attrs = body_attrs(dom)
    viewport, scroll = int(attrs.get("data-viewport", "0")), int(attrs.get("data-scroll-width", "0"))
    ok = 0 < scroll <= viewport
    print(f"{'ok ' if ok else 'BAD'} {label}: document {scroll} px wide in a {viewport} px viewport"
          + ("" if ok else f"; sticking out: {attrs.get('data-overflowing') or '?'}"))
    return ok


def check(report: Path, screenshot: Path | None, pdf: Path | None, binary: str, width: int) -> int:
    html = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="report-check-") as name:
        tmp = Path(name)
        screen = render(binary, html, tmp, "screen", width)
        printed = render(binary, print_layout(html), tmp, "print", A4_PRINTABLE_PX)
        if screen is None or printed is None:
            return 2
        if screenshot is not None:
            shot = run_chromium(binary, report.resolve(), tmp / "profile-shot", f"--window-size={width},3000",
                                f"--screenshot={screenshot.resolve()}")
            print(f"screenshot: {screenshot} (rc={shot.returncode})")
        pdf_path = pdf.resolve() if pdf is not None else tmp / "report.pdf"
        run_chromium(binary, report.resolve(), tmp / "profile-pdf", "--no-pdf-header-footer",
                     f"--print-to-pdf={pdf_path}")
        pdf_bytes = pdf_path.read_bytes() if pdf_path.exists() else b""
    states = image_states(screen)
    for name, decoded, natural in states:
        print(f"{'ok ' if decoded == '1' else 'BAD'} <img {name}> naturalWidth={natural}")
    if not states:
        print("no <img> found in the rendered report")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf_bytes))
    pdf_ok = pdf_bytes.startswith(b"%PDF") and pages > 0
    print(f"{'ok ' if pdf_ok else 'BAD'} PDF: {pages} pages, {len(pdf_bytes)} bytes")
    checks = [bool(states) and all(decoded == "1" for _, decoded, _ in states),
              overflow_ok(screen, f"screen at {width} px"), overflow_ok(printed, "print layout at A4 width"), pdf_ok]
    return 0 if all(checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--pdf", type=Path, default=None, help="keep the printed PDF here")
    parser.add_argument("--width", type=int, default=1280, help="screen width to check for overflow (px)")
    parser.add_argument("--chromium", default=None, help="browser binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    binary = find_chromium(args.chromium)
    if binary is None:
        print("chromium not found (apt-get install chromium)")
        return 2
    return check(args.report, args.screenshot, args.pdf, binary, args.width)


if __name__ == "__main__":
    sys.exit(main())

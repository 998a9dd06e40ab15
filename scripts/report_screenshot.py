"""A full-page PNG of a run report, taken in headless Chromium, for the README (docs/).

    .venv/bin/python scripts/report_screenshot.py demo/report.html docs/report.png [--width 1280]

Uses the browser driver of the tests (tests/browser.py), so there is one copy of it; needs Debian's
`chromium` (`apt-get install -y chromium`). Fails if the page logged an error or asked for the network.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import launch, png_size  # noqa: E402  (tests/ is not a package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report's HTML file (batchrun report --output ...)")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchrun-chromium-") as profile:
        with launch(Path(profile)) as browser:
            page = browser.open_page(args.report, viewport=(args.width, 800))
    problems = page.console_errors + [f"request to {url}" for url in page.network_requests]
    if problems:
        print("\n".join(f"{args.report}: {problem}" for problem in problems), file=sys.stderr)
        return 1
    page.screenshot(args.png)
    width, height = png_size(page.png)
    print(f"{args.png}: {width}×{height} px, {len(page.charts)} charts")
    return 0


if __name__ == "__main__":
    sys.exit(main())

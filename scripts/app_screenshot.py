"""Screenshot of the Streamlit UI on the real artifacts (docs/images/app.png): serve the app,
diagnose one test-split X-ray in headless Chromium, save the whole page.

    python scripts/app_screenshot.py [--case covid_cxr:...] [--out docs/images/app.png]

Uses the default settings (models/, indexes/, the shared data packs), or MEDXPERT_* variables.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `tests.browser` imports from the checkout

from tests.browser import AppPage, chromium, missing_browser, streamlit_app  # noqa: E402

SAMPLE_LABEL = "Test-split X-ray"
DEFAULT_CASE = "covid_cxr:covid-19-pneumonia-67"  # a note, a priority triage, an ICD-10 code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=DEFAULT_CASE, help=f"test-split X-ray ({DEFAULT_CASE})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "app.png")
    args = parser.parse_args()
    if reason := missing_browser():
        print(f"error: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        with streamlit_app({}, scratch / "streamlit.log") as url, chromium(scratch / "p") as driver:
            page = AppPage(driver, url, timeout_s=180).open()
            page.choose("Sample X-ray (test split)")
            page.select(SAMPLE_LABEL, args.case)
            page.diagnose()
            page.wait_for_text(f"Result for the test X-ray {args.case}", "most similar studies")
            shrink(page.screenshot(args.out))
            print(f"wrote {args.out}")
    return 0


def shrink(path: Path) -> None:
    """256-colour palette PNG: a third of the size, no visible change for a UI screenshot."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256)
    palette.save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())

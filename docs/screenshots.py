"""Take the README's screenshots from a running app in headless Chromium.

    streamlit run app.py --server.port 8501 &
    python docs/screenshots.py http://localhost:8501
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).parent
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = [  # (file, URL path and query)
    ("tokens.png", "/"),
    ("probabilities.png", "/probabilities"),
    ("figure-5-7.png", "/figure-5-7?step=6"),
    ("cross-entropy.png", "/cross-entropy"),
    ("per-token-loss.png", "/per-token-loss?preset=The+Verdict%2C+first+sentence"),
    ("dataset.png", "/dataset"),
    ("presentation.png", "/figure-5-7?step=3&presentation=true"),
]


def main(base: str, only: list[str]) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        for name, path in SHOTS:
            if only and name not in only:
                continue
            page.goto(base.rstrip("/") + path)
            if name == "dataset.png":
                compute = page.get_by_role("button", name="Compute")
                compute.wait_for(timeout=120_000)
                compute.click()
                page.get_by_text("Validation perplexity").first.wait_for(timeout=600_000)
            elif "presentation" in path:
                page.get_by_text("Step 3 of 6").first.wait_for(timeout=120_000)
            else:
                page.get_by_text("Loss (cross entropy)").first.wait_for(timeout=120_000)
            page.wait_for_timeout(2500)  # charts finish their first animation
            page.screenshot(path=str(HERE / name), full_page=False)
            print("saved", HERE / name)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8501", sys.argv[2:])

"""Take the README's screenshots from a running app in headless Chromium.

streamlit run app.py --server.port 8501 &
python docs/screenshots.py http://localhost:8501
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from devtools.harness import CHROMIUM_ARGS, find_chromium  # noqa: E402  (after the path)

# A short Verdict text and a model trained on it (`python -m core train`, saved as tiny-verdict).
VERDICT = "text=I+HAD+always+thought+Jack+Gisburn+rather+a+cheap+genius--though+a+good+fellow+enough"
TINY = "&model=trained-tiny-verdict"
PRESENT = "presentation=true"
# The lesson, one view each, as a 1280x720 projector shows it (presentation mode): the README's
# lesson screenshots. (file, URL path and query, text that says the view is drawn)
LESSON = [
    ("lesson-1-start.png", f"/?{PRESENT}", "Begin"),
    ("lesson-2-tokens.png", f"/tokens?{PRESENT}", "Text 1"),
    ("lesson-3-probabilities.png", f"/probabilities?{PRESENT}", "top 10 next tokens"),
    ("lesson-4-figure-5-7.png", f"/figure-5-7?step=4&{PRESENT}", "Step 4 of 6"),
    ("lesson-5-cross-entropy.png", f"/cross-entropy?{PRESENT}", "Loss is the mean surprisal"),
    ("lesson-6-dataset.png", f"/dataset?{PRESENT}", "Validation perplexity"),
    ("lesson-7-training.png", f"/training?{PRESENT}", "Estimate the time"),
]
SHOTS = [  # (file, URL path and query)
    *[(name, path) for name, path, _ in LESSON],
    ("per-token-loss.png", "/per-token-loss?preset=The+Verdict%2C+first+sentence"),
    # Accessibility: 200 % zoom in a 1280x720 window (a 640x360 CSS viewport at scale 2), and
    # presentation mode on a 1280x720 projector (sidebar collapsed).
    ("zoom-200.png", "/figure-5-7?step=3"),
    ("presentation-1280x720.png", "/figure-5-7?step=3&presentation=true"),
    ("temperature.png", "/temperature?" + VERDICT + TINY),
    ("units.png", "/units?preset=Ragged+batch+%28padding%29"),
    ("confidence.png", "/confidence?" + VERDICT + "&gltr=true" + TINY),
    ("gradient.png", "/gradient?grad_at=2&top_k=8"),
    ("loss-by-position.png", "/dataset"),
    ("compare-tokens.png", "/compare?" + VERDICT),  # needs a trained model (python -m core train)
]
VIEWPORTS = {  # file: (width, height, device scale); the others use 1440x1000 at scale 1
    "zoom-200.png": (640, 360, 2),
    "presentation-1280x720.png": (1280, 720, 1),
    **{name: (1280, 720, 1) for name, _, _ in LESSON},
}
LESSON_WAIT = {name: marker for name, _, marker in LESSON}
# The lesson views show their own first metric, and two need clicks (element to shoot, buttons).
WAIT = {
    "temperature.png": "Lowest loss",
    "units.png": "Bits per byte",
    "confidence.png": "Mean entropy",
    "gradient.png": "Target pushed up by",
    "compare-tokens.png": "Mean KL",
}


def main(base: str, only: list[str]) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        for name, path in SHOTS:
            if only and name not in only:
                continue
            width, height, scale = VIEWPORTS.get(name, (1440, 1000, 1))
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
            page.goto(base.rstrip("/") + path)
            if name == "loss-by-position.png":
                for label in (
                    "Compute",
                    "Compute loss by position",
                ):  # results kept from a run before: no button
                    try:
                        page.get_by_role("button", name=label, exact=True).click(timeout=60_000)
                    except PlaywrightTimeout:
                        pass
                page.get_by_text("Training, by position").first.wait_for(timeout=600_000)
                page.wait_for_timeout(2500)
                page.locator(".js-plotly-plot").nth(1).scroll_into_view_if_needed()
            elif name == "lesson-6-dataset.png":
                compute = page.get_by_role("button", name="Compute")
                try:  # results kept from a run before: no button
                    compute.click(timeout=60_000)
                except PlaywrightTimeout:
                    pass
                page.get_by_text(LESSON_WAIT[name]).first.wait_for(timeout=600_000)
            elif name in LESSON_WAIT:
                page.get_by_text(LESSON_WAIT[name]).first.wait_for(timeout=120_000)
            elif name in WAIT:
                page.get_by_text(WAIT[name]).first.wait_for(timeout=120_000)
                if name == "compare-tokens.png":
                    page.get_by_text("Two models, token by token").first.scroll_into_view_if_needed()
            elif "presentation" in path:
                page.get_by_text("Step 3 of 6").first.wait_for(timeout=120_000)
            else:
                page.get_by_text("Loss (cross entropy)").first.wait_for(timeout=120_000)
            page.wait_for_timeout(2500)  # charts finish their first animation
            if name == "zoom-200.png":  # past the stacked metrics: the step controls and diagram
                page.locator('[data-testid="stSlider"]').first.evaluate(
                    "e => e.scrollIntoView({block: 'start'})"
                )
                page.wait_for_timeout(500)
            page.screenshot(path=str(HERE / name), full_page=False)
            print("saved", HERE / name)
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8501", sys.argv[2:])

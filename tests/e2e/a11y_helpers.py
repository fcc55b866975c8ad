"""Accessibility checks for the browser tests: axe-core audits and a text-contrast probe."""

from __future__ import annotations

import json

from devtools.harness import ARTIFACTS

# axe-core as bundled by axe-playwright-python (pinned in requirements-dev.txt). A different
# bundled version fails the audit until the pin, this constant and docs/accessibility.md move together.
AXE_VERSION = "4.12.1"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": WCAG_TAGS}, "resultTypes": ["violations"]}
AUDIT_DIR = ARTIFACTS / "axe"


def app_views() -> list[tuple[str, str]]:
    """(URL path, title) of every view in ui/lesson_nav.py's VIEWS, in navigation order.
    The start page opens at "/"; a view added to VIEWS is audited without editing the tests."""
    from ui.lesson_nav import VIEWS

    return [("" if n == 0 else v.path, v.title) for n, v in enumerate(VIEWS)]


def audit(page, state: str) -> list[str]:
    """Run axe-core (WCAG 2.0 A/AA + 2.1 A/AA rules) on the page as it is now.

    Returns one line per violating node; records the result in test-artifacts/axe/<state>.json.
    """
    from axe_playwright_python.sync_playwright import Axe

    response = Axe().run(page, options=AXE_OPTIONS).response
    version = response["testEngine"]["version"]
    lines = [
        f"{v['id']} ({v['impact']}): {', '.join(map(str, n['target']))}: {n['failureSummary'][:300]}"
        for v in response["violations"]
        for n in v["nodes"]
    ]
    AUDIT_DIR.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in state)
    (AUDIT_DIR / f"{name}.json").write_text(
        json.dumps(
            {"state": state, "axe_core": version, "tags": WCAG_TAGS, "url": page.url, "violations": lines},
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"axe-core {version}: {state}: {len(lines)} violations")
    assert version == AXE_VERSION, f"axe-core {version} ran, the audit is pinned to {AXE_VERSION}"
    return lines


# The lowest contrast ratios of visible text in the main area, computed from the browser's
# computed styles (colour x opacity over the blended backgrounds behind it). Chart text (SVG)
# and screen-reader-only or disabled text are left out.
CONTRAST_JS = """() => {
  const parse = c => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = ([r, g, b]) => { const f = x => { x /= 255;
      return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const blend = (t, b) => [0, 1, 2].map(i => t[i] * t[3] + b[i] * (1 - t[3])).concat([1]);
  // The backgrounds actually behind the text: an ancestor's box counts only if it contains the text's
  // centre (a slider's value label is a child of the thumb but drawn above it, on the page).
  const background = el => { const layers = []; const r = el.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
      const b = e.getBoundingClientRect();
      const behind = e === document.documentElement
        || (x >= b.left && x <= b.right && y >= b.top && y <= b.bottom);
      if (c && c[3] > 0 && behind) { layers.push(c); if (c[3] >= 1) break; } }
    let out = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) out = blend(layers[i], out); return out; };
  const opacity = el => { let o = 1;
    for (let e = el; e; e = e.parentElement) o *= parseFloat(getComputedStyle(e).opacity); return o; };
  const main = document.querySelector('[data-testid="stMain"]');
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const out = [];
  while (walker.nextNode()) {
    const t = walker.currentNode; const text = t.textContent.trim(); if (!text) continue;
    const el = t.parentElement;
    if (el.closest('svg, .ll-sr, [aria-hidden="true"], [disabled], [aria-disabled="true"]')) continue;
    if (!el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    const r = el.getBoundingClientRect(); if (r.width === 0 || r.height === 0) continue;
    const bg = background(el); const c = parse(getComputedStyle(el).color);
    const fg = blend([c[0], c[1], c[2], c[3] * opacity(el)], bg);
    const a = lum(fg), b = lum(bg);
    out.push({ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), text: text.slice(0, 40),
              color: getComputedStyle(el).color,
              background: 'rgb(' + bg.slice(0, 3).map(Math.round).join(',') + ')'});
  }
  out.sort((x, y) => x.ratio - y.ratio);
  return {count: out.length, lowest: out.slice(0, 8)};
}"""


def lowest_contrast(page) -> dict:
    return page.evaluate(CONTRAST_JS)

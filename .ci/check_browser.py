#!/usr/bin/env python3
"""Open built book pages in headless Chromium with no network and check them.

Usage::

    python .ci/check_browser.py SITE_DIR [PAGE ...] [--screenshots DIR]

``PAGE`` is a path inside ``SITE_DIR`` (e.g. ``book/01_sound_matching.html``);
with none, every HTML page of the site is opened. Each page is loaded from a
``file://`` URL; every request that is not ``file:``/``data:``/``blob:`` is
aborted and reported. A page fails when

* it made any such network request;
* a local file it asked for is missing (a request failed);
* a script threw an uncaught exception (except the one known, harmless
  duplicate declaration from sphinx-thebe's config script, see KNOWN_ERRORS);
* it has math but MathJax did not typeset all of it (one ``mjx-container``
  per ``.math`` element, no ``mjx-merror``), or its MathJax fonts did not load;
* it has saved ipywidgets views but the widget manager did not render each
  of them (``.widget-subarea`` holding a ``.jupyter-widgets`` element).

A full-page screenshot of each page goes to ``--screenshots`` (default
``/tmp/pnpbook-browser``). Exit 1 on any failure. If Playwright (pip
package ``playwright``; never run ``playwright install``) or Chromium
(``/usr/bin/chromium``, Debian package ``chromium``; or set
``PNPBOOK_CHROMIUM``) is missing, the check is skipped with exit 0, unless
the environment variable ``PNPBOOK_REQUIRE_BROWSER`` is set, then exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:  # reported by main(): skip or fail
    PlaywrightError = Exception
    sync_playwright = None

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
# Uncaught page errors that are known and harmless. sphinx-thebe adds its
# config script (`const THEBE_JS_URL = ...`) twice to every page of a Jupyter
# Book 1 site; the second copy throws, the first has already defined the
# constants (thebe itself is off in this book).
KNOWN_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
WAIT_MS = 20_000
# Jupyter Book writes index.html as a redirect to the root page.
REDIRECT = re.compile(r"<meta[^>]+http-equiv=[\"']?refresh", re.I)

# Runs in the page: waits for MathJax and the widgets, then reports.
PROBE = """
async (waitMs) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const bounded = (p) => Promise.race([p, sleep(waitMs).then(() => 'timed out')]);
  const views = document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]').length;
  const math = document.querySelectorAll('.math').length;
  const t0 = Date.now();
  if (document.readyState !== 'complete') {
    await bounded(new Promise((r) => window.addEventListener('load', r, {once: true})));
  }
  let mathjax = 'absent';
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    try {
      mathjax = await bounded(window.MathJax.startup.promise.then(() => 'ready'));
    } catch (e) {
      mathjax = 'failed: ' + e;
    }
  } else if (math > 0) {
    mathjax = 'not loaded';
  }
  const rendered = () => Array.from(document.querySelectorAll('.widget-subarea'))
    .filter((el) => el.querySelector('.jupyter-widgets')).length;
  while (rendered() < views && Date.now() - t0 < waitMs) {
    await sleep(100);
  }
  await bounded(document.fonts.ready);
  const fonts = Array.from(document.fonts)
    .filter((f) => f.family.startsWith('MJX'))
    .map((f) => [f.family, f.status]);
  return {
    math: math,
    typeset: document.querySelectorAll('.math mjx-container').length,
    merrors: document.querySelectorAll('mjx-merror').length,
    labelMath: document.querySelectorAll('.widget-subarea mjx-container').length,
    mathjax: mathjax,
    views: views,
    widgets: rendered(),
    sliders: document.querySelectorAll('.widget-slider').length,
    mjxFontsFailed: fonts.filter((f) => f[1] === 'error').map((f) => f[0]),
    mjxFontsLoaded: fonts.filter((f) => f[1] === 'loaded').length,
  };
}
"""


def skip_or_fail(reason: str) -> int:
    """Skip (exit 0) unless PNPBOOK_REQUIRE_BROWSER is set (then exit 1)."""
    if os.environ.get("PNPBOOK_REQUIRE_BROWSER"):
        print(f"check_browser: FAILED: {reason} (PNPBOOK_REQUIRE_BROWSER is set)")
        return 1
    print(f"check_browser: SKIPPED: {reason}")
    return 0


def find_chromium() -> str | None:
    """Path of the Chromium executable, or None."""
    candidates = [os.environ.get("PNPBOOK_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def check_page(context, site: Path, rel: str, shots: Path) -> list[str]:
    """Open one page; return its problems (empty when it passes)."""
    problems: list[str] = []
    blocked: list[str] = []
    failed: list[str] = []
    errors: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    page = context.new_page()
    page.route("**/*", route)
    page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    shot = shots / (rel.replace("/", "__") + ".png")
    try:
        page.goto((site / rel).as_uri(), wait_until="load", timeout=WAIT_MS)
        report = page.evaluate(PROBE, WAIT_MS)
        page.wait_for_timeout(300)  # let late requests show up
        page.screenshot(path=str(shot), full_page=True)
    except PlaywrightError as exc:
        print(f"  {rel}: FAIL: {exc}")
        return [str(exc)]
    finally:
        page.close()

    for url in blocked:
        problems.append(f"network request blocked: {url}")
    for item in failed:
        if not any(item.startswith(b) for b in blocked):
            problems.append(f"request failed: {item}")
    for err in errors:
        if not any(k in err for k in KNOWN_ERRORS):
            problems.append(f"uncaught error: {err}")
    if report["math"]:
        if report["mathjax"] != "ready":
            problems.append(f"MathJax {report['mathjax']}")
        if report["typeset"] < report["math"]:
            problems.append(f"math typeset {report['typeset']}/{report['math']}")
        if report["merrors"]:
            problems.append(f"{report['merrors']} MathJax error(s) (mjx-merror)")
        if report["mjxFontsFailed"] or not report["mjxFontsLoaded"]:
            problems.append(f"MathJax fonts not loaded: {report['mjxFontsFailed']}")
    if report["widgets"] < report["views"]:
        problems.append(f"widgets rendered {report['widgets']}/{report['views']}")
    summary = (
        f"math {report['typeset']}/{report['math']} typeset, "
        f"widgets {report['widgets']}/{report['views']} rendered "
        f"({report['sliders']} sliders, {report['labelMath']} math labels), "
        f"{len(blocked)} network requests blocked, screenshot {shot}"
    )
    print(f"  {rel}: {'FAIL' if problems else 'ok'}: {summary}")
    for p in problems:
        print(f"      {p}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="built site folder, e.g. _build/html")
    parser.add_argument("pages", nargs="*", help="pages inside the site (default: all)")
    parser.add_argument("--screenshots", type=Path, default=Path("/tmp/pnpbook-browser"))
    args = parser.parse_args(argv[1:])

    site = args.site.resolve()
    if not site.is_dir():
        print(f"check_browser: {site} is not a folder (build the book first)")
        return 1
    pages = args.pages or sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if p.relative_to(site).parts[0] != "_static"
    )
    missing = [p for p in pages if not (site / p).is_file()]
    if missing:
        print(f"check_browser: no such page(s) in {site}: {', '.join(missing)}")
        return 1

    if sync_playwright is None:
        return skip_or_fail("the Python package playwright is not installed")
    chromium = find_chromium()
    if chromium is None:
        return skip_or_fail("Chromium not found (apt-get install chromium)")

    redirects = [p for p in pages if REDIRECT.search((site / p).read_text(encoding="utf-8", errors="replace"))]
    for rel in redirects:
        print(f"  {rel}: skipped: a redirect page (meta refresh)")
    pages = [p for p in pages if p not in redirects]
    if not pages:
        print("check_browser: no page to open")
        return 1
    args.screenshots.mkdir(parents=True, exist_ok=True)
    print(f"check_browser: {len(pages)} page(s) of {site} in {chromium}, network blocked")
    n_bad = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for rel in pages:
            n_bad += bool(check_page(context, site, rel, args.screenshots))
        browser.close()
    if n_bad:
        print(f"check_browser: {n_bad} of {len(pages)} page(s) failed")
        return 1
    print(f"check_browser: {len(pages)} page(s) rendered offline: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

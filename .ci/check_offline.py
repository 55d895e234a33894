#!/usr/bin/env python3
"""Check that the built HTML book loads nothing from the network.

Usage::

    python .ci/check_offline.py [SITE_DIR]      # default: _build/html

Every HTML page of the site (``_static/`` holds templates, not pages, and is
skipped) is parsed with :mod:`html.parser`. The check fails, listing the page
and the URL, when

* a resource the browser fetches by itself -- ``<script src>``, ``<link href>``
  with a fetching ``rel`` (stylesheet, preload, icon, ...), ``<img>``,
  ``<audio>``, ``<video>``, ``<source>``, ``<track>``, ``<iframe>``,
  ``<embed>``, ``<object data>``, or a ``url()``/``@import`` in a ``<style>``
  block or ``style`` attribute -- points to an ``http(s)://`` or
  protocol-relative ``//`` URL;
* such a local resource is missing from the site;
* a CSS file of the site has an ``@import`` or ``url()`` that is remote or
  points to a missing local file;
* the vendored MathJax or ipywidgets manager is missing, a page with math
  does not load the local MathJax, or a page with saved widget state does not
  load the local widget manager;
* a page has an empty citation (``[]``, what sphinxcontrib-bibtex renders for
  a ``{cite}`` whose key is unknown).

Plain links (``<a href>``: launch buttons, repository, DOIs) are allowed.
Exit status 0 when the site passes, 1 otherwise. Standard library only.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Vendored assets, relative to the site root (see book/vendor/update.sh).
MATHJAX = "_static/mathjax/tex-chtml.js"
WIDGETS = "_static/jupyter-widgets/embed.js"
REQUIRED = (
    MATHJAX,
    "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff",
    "_static/mathjax/input/tex/extensions/boldsymbol.js",
    WIDGETS,
)

# <link rel=...> values that make the browser fetch the target.
FETCHING_RELS = {
    "stylesheet",
    "preload",
    "modulepreload",
    "prefetch",
    "prerender",
    "preconnect",
    "dns-prefetch",
    "icon",
    "apple-touch-icon",
    "mask-icon",
    "manifest",
}
# Elements whose attribute is fetched when the page loads.
EMBEDDED = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "audio": ("src",),
    "video": ("src", "poster"),
    "source": ("src", "srcset"),
    "track": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
}
WIDGET_MIME = ("application/vnd.jupyter.widget-state+json", "application/vnd.jupyter.widget-view+json")

CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
CSS_URL = re.compile(r"""url\(\s*(?P<q>['"]?)(?P<url>.*?)(?P=q)\s*\)""", re.S)
CSS_IMPORT = re.compile(r"""@import\s+(?P<q>['"])(?P<url>.*?)(?P=q)""")


def is_remote(url: str) -> bool:
    """True for ``http(s)://`` and protocol-relative ``//`` URLs."""
    u = url.strip().lower()
    return u.startswith(("http://", "https://", "//"))


def is_inline(url: str) -> bool:
    """True for URLs that need no file: data, blob, fragments, empty."""
    u = url.strip().lower()
    return u == "" or u.startswith(("data:", "blob:", "#", "about:", "javascript:"))


def css_urls(text: str) -> list[str]:
    """URLs referenced by ``url()`` and ``@import`` in CSS text."""
    text = CSS_COMMENT.sub("", text)
    return [m.group("url") for m in CSS_URL.finditer(text)] + [
        m.group("url") for m in CSS_IMPORT.finditer(text)
    ]


def srcset_urls(value: str) -> list[str]:
    """The URLs of a ``srcset`` attribute."""
    return [part.split()[0] for part in value.split(",") if part.strip()]


class Page(HTMLParser):
    """Collect what one HTML page makes the browser fetch."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[tuple[str, str]] = []  # (what, url)
        self.scripts: list[str] = []
        self.inline_css: list[str] = []
        self.has_math = False
        self.has_widgets = False
        self.citations: list[str] = []
        self._cite_depth = 0  # >0 while inside <span class="bibtex-citation">
        self._cite_text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        classes = a.get("class", "").split()
        if "math" in classes:
            self.has_math = True
        if tag == "script":
            if a.get("type", "") in WIDGET_MIME:
                self.has_widgets = True
            if "src" in a:
                self.scripts.append(a["src"])
        if tag == "link":
            rels = set(a.get("rel", "").lower().split())
            if rels & FETCHING_RELS and "href" in a:
                self.fetched.append((f"<link rel={a.get('rel')}>", a["href"]))
        for attr in EMBEDDED.get(tag, ()):
            if attr in a:
                urls = srcset_urls(a[attr]) if attr == "srcset" else [a[attr]]
                self.fetched += [(f"<{tag} {attr}>", u) for u in urls]
        if "style" in a:
            self.fetched += [("style attribute", u) for u in css_urls(a["style"])]
        if tag == "style":
            self._in_style = True
        if tag == "span":
            if self._cite_depth:
                self._cite_depth += 1
            elif "bibtex-citation" in classes:
                self._cite_depth = 1
                self._cite_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if tag == "span" and self._cite_depth:
            self._cite_depth -= 1
            if not self._cite_depth:
                self.citations.append("".join(self._cite_text))

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.inline_css.append(data)
        if self._cite_depth:
            self._cite_text.append(data)


def local_target(site: Path, base: Path, url: str) -> Path:
    """The file a local URL points to (query and fragment dropped)."""
    path = unquote(urlsplit(url).path)
    if path.startswith("/"):
        return site / path.lstrip("/")
    return base / path


def check(site: Path) -> list[str]:
    """All problems found in the site, as 'file: message' lines."""
    problems: list[str] = []
    site = site.resolve()
    pages = sorted(p for p in site.rglob("*.html") if p.relative_to(site).parts[0] != "_static")
    if not pages:
        return [f"{site}: no HTML pages (was the book built?)"]
    for rel in REQUIRED:
        if not (site / rel).is_file():
            problems.append(f"{rel}: vendored file missing from the site")

    for page_path in pages:
        name = page_path.relative_to(site).as_posix()
        page = Page()
        page.feed(page_path.read_text(encoding="utf-8"))
        page.close()
        fetched = page.fetched + [("<style>", u) for css in page.inline_css for u in css_urls(css)]
        for what, url in fetched:
            if is_remote(url):
                problems.append(f"{name}: {what} loads remote {url}")
            elif not is_inline(url) and not local_target(site, page_path.parent, url).is_file():
                problems.append(f"{name}: {what} points to missing {url}")
        loaded = {local_target(site, page_path.parent, s).resolve() for s in page.scripts if not is_remote(s)}
        if page.has_math and (site / MATHJAX).resolve() not in loaded:
            problems.append(f"{name}: has math but does not load {MATHJAX}")
        if page.has_widgets and (site / WIDGETS).resolve() not in loaded:
            problems.append(f"{name}: has widget state but does not load {WIDGETS}")
        for text in page.citations:
            if not re.sub(r"[\s\[\]();,]", "", text):
                problems.append(f"{name}: empty citation {text.strip()!r} (unknown bibtex key?)")

    for css_path in sorted(site.rglob("*.css")):
        name = css_path.relative_to(site).as_posix()
        for url in css_urls(css_path.read_text(encoding="utf-8", errors="replace")):
            if is_remote(url):
                problems.append(f"{name}: CSS loads remote {url}")
            elif not is_inline(url) and not local_target(site, css_path.parent, url).is_file():
                problems.append(f"{name}: CSS points to missing {url}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 2
    site = Path(argv[1] if len(argv) == 2 else "_build/html")
    if not site.is_dir():
        print(f"check_offline: {site} is not a folder (build the book first)", file=sys.stderr)
        return 1
    problems = check(site)
    n_pages = sum(1 for p in site.rglob("*.html") if p.relative_to(site).parts[0] != "_static")
    if problems:
        print(f"check_offline: {len(problems)} problem(s) in {site}:")
        for line in problems:
            print("  " + line)
        return 1
    print(f"check_offline: {n_pages} pages in {site} load nothing from the network: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

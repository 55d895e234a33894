#!/usr/bin/env bash
# Re-vendor the browser assets that the book's HTML pages load, from npm.
#
# Usage:   bash book/vendor/update.sh      (from anywhere; needs node + npm)
#
# The exact versions come from package.json beside this script: edit them
# there, run this script, rebuild the book and run .ci/check_offline.py and
# .ci/check_browser.py. Only the files needed at runtime are copied:
#
#   mathjax/                  MathJax 3, served as _static/mathjax/
#     tex-chtml.js            TeX input + CommonHTML output combined component
#                             (includes ams, newcommand, configmacros,
#                             noundefined, require, autoload, the menu and
#                             assistive-mml)
#     input/tex/extensions/   TeX packages that `autoload` fetches lazily
#                             (\boldsymbol, \cancel, mathtools, physics, ...);
#                             the all-packages aggregate is left out
#     output/chtml/fonts/woff-v2/  the MathJax TeX web fonts
#     LICENSE                 Apache-2.0
#   jupyter-widgets/          @jupyter-widgets/html-manager, as _static/jupyter-widgets/
#     embed.js                the plain (non-AMD) embedding bundle: renders
#                             the saved widget state of base/controls/output
#                             widgets, needs no require.js and no CDN
#     *.woff2                 Font Awesome 5 fonts the bundle's CSS refers to
#                             (woff2 comes first in its @font-face sources, so
#                             the eot/woff/ttf/svg fallbacks are left out)
#     embed.js.LICENSE.txt    third-party notices of the bundle
#     LICENSE                 BSD-3-Clause of the Jupyter widgets packages
#     fontawesome-LICENSE.txt Font Awesome Free licence (fonts: SIL OFL 1.1)
#
# pnpbook-widgets-mathjax.js beside this script is the book's own code (a
# MathJax 2 -> 3 bridge for widget labels), not from npm: left as it is.
#
# Not vendored: MathJax's optional accessibility explorer and speech rule
# engine (loaded only if a reader turns them on in the MathJax menu), and
# html-manager's embed-amd.js (needs require.js; it is for third-party
# widget libraries, which this book does not use).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cp "$here/package.json" "$tmp/package.json"
(cd "$tmp" && npm install --no-audit --no-fund --ignore-scripts --no-package-lock >/dev/null)
nm="$tmp/node_modules"

# --- MathJax -----------------------------------------------------------------
mj_src="$nm/mathjax/es5"
mj="$here/mathjax"
rm -rf "$mj"
mkdir -p "$mj/input/tex/extensions" "$mj/output/chtml/fonts/woff-v2"
cp "$mj_src/tex-chtml.js" "$mj/"
cp "$mj_src"/input/tex/extensions/*.js "$mj/input/tex/extensions/"
rm -f "$mj/input/tex/extensions/all-packages.js"
cp "$mj_src"/output/chtml/fonts/woff-v2/*.woff "$mj/output/chtml/fonts/woff-v2/"
cp "$nm/mathjax/LICENSE" "$mj/LICENSE"

# --- ipywidgets HTML manager -------------------------------------------------
hm_src="$nm/@jupyter-widgets/html-manager/dist"
hm="$here/jupyter-widgets"
rm -rf "$hm"
mkdir -p "$hm"
cp "$hm_src/embed.js" "$hm_src/embed.js.LICENSE.txt" "$hm/"
cp "$hm_src"/*.woff2 "$hm/"
# html-manager ships no LICENSE file of its own; the identical BSD-3-Clause
# text of the Jupyter widgets packages comes with its dependency
# @jupyter-widgets/schema.
cp "$nm/@jupyter-widgets/schema/LICENSE" "$hm/LICENSE"
cp "$nm/@fortawesome/fontawesome-free/LICENSE.txt" "$hm/fontawesome-LICENSE.txt"

# Every font file the bundle names must be there (woff2 is what browsers use).
for f in $(grep -o '[0-9a-f]\{20\}\.woff2' "$hm/embed.js" | sort -u); do
  test -f "$hm/$f" || { echo "missing $f" >&2; exit 1; }
done

installed() { node -p "require('$nm/$1/package.json').version"; }
echo "vendored mathjax $(installed mathjax), @jupyter-widgets/html-manager $(installed @jupyter-widgets/html-manager)"
du -sh "$mj" "$hm"

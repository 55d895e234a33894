/* pnpbook (not vendored; kept by hand, see _config.yml nb_ipywidgets_js).
 *
 * The ipywidgets HTML manager (jupyter-widgets/embed.js) typesets widget
 * labels (descriptions, Label, HTMLMath) with the MathJax 2 API,
 * MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]), whenever
 * window.MathJax exists. MathJax 3 has no Hub, so on a page with both math
 * and widgets that call throws, and LaTeX in a widget description stays raw.
 *
 * This file gives MathJax 3 a minimal Hub.Queue. Widgets write inline math
 * as $...$ (as in Jupyter), which the book's MathJax does not look for (Sphinx
 * emits \(...\) and $ may appear in prose), so the element's text nodes are
 * first rewritten from $...$ / $$...$$ to \(...\) / \[...\]; the element is
 * then typeset, chained on MathJax.startup.promise as MathJax 3 asks for
 * typesetting after the page has loaded.
 *
 * It must be loaded before embed.js: both act on the window "load" event,
 * and listeners run in the order they were added.
 */
(function () {
  "use strict";

  function dollarsToDelimiters(element) {
    var walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      node.nodeValue = node.nodeValue
        .replace(/\$\$([^$]+)\$\$/g, "\\[$1\\]")
        .replace(/\$([^$]+)\$/g, "\\($1\\)");
    }
  }

  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub) {
      return;
    }
    mj.Hub = {
      Queue: function (job) {
        var element = job && job[2];
        if (!element || !mj.startup || !mj.typesetPromise) {
          return; // MathJax 3 did not load: leave the text as it is.
        }
        mj.startup.promise = mj.startup.promise
          .then(function () {
            dollarsToDelimiters(element);
            return mj.typesetPromise([element]);
          })
          .catch(function (err) {
            console.warn("pnpbook: MathJax could not typeset a widget label", err);
          });
      },
    };
  });
})();

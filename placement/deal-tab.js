// The deal tab: copies a new survey link to the clipboard. Loaded as a file (the
// frame's CSP forbids inline scripts).
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var input = document.getElementById(button.getAttribute("data-copy"));
    if (!input) { return; }
    var done = button.parentNode.querySelector(".copy__done");
    var shown = function () { if (done) { done.hidden = false; } };
    input.select();
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(input.value).then(shown, function () {
        if (document.execCommand("copy")) { shown(); }
      });
    } else if (document.execCommand("copy")) {
      shown();
    }
  });
})();

// opros demo: plays the portal's part. Submits the hidden frame form (the POST
// Bitrix24 sends when a tab opens) and sizes the frame to its content, which the real
// portal does on BX24.fitWindow.
(function () {
  "use strict";
  function fit(frame) {
    try {
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) {
        frame.style.height = doc.documentElement.scrollHeight + "px";
      }
    } catch (e) { /* another origin: keep the minimum height */ }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var frames = document.querySelectorAll("iframe.app-frame");
    Array.prototype.forEach.call(frames, function (frame) {
      frame.addEventListener("load", function () {
        fit(frame);
        var doc = frame.contentDocument;
        if (doc && window.ResizeObserver) {
          new ResizeObserver(function () { fit(frame); }).observe(doc.body);
        }
      });
    });
    var forms = document.querySelectorAll("form[data-autosubmit]");
    Array.prototype.forEach.call(forms, function (form) { form.submit(); });
  });
})();

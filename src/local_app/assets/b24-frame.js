// Runs inside Bitrix24 iframes (install page, deal tab, admin page). BX24 is loaded
// from the portal's CDN by the page; without it (opened outside Bitrix24) nothing here runs.
(function () {
  "use strict";
  if (typeof BX24 === "undefined") { return; }
  BX24.init(function () {
    var body = document.body;
    if (body.getAttribute("data-install-finish") === "yes") {
      // protocol §3.1: until installFinish() the portal shows no tab and sends no events.
      BX24.installFinish();
    }
    if (typeof BX24.fitWindow === "function") { BX24.fitWindow(); }
    if (window.ResizeObserver && typeof BX24.fitWindow === "function") {
      new ResizeObserver(function () { BX24.fitWindow(); }).observe(body);
    }
  });
})();

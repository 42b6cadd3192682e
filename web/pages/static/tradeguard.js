// TradeGuard's pages: the few lines that keep them current. No library, nothing fetched from elsewhere.
// - [data-refresh="/url"]: its content is replaced by what /url answers, every data-every ms (default 2000),
//   unless the user is typing in it (a reason half written is not thrown away).
// - .countdown[data-deadline="ISO time"]: shows the seconds left, every second.
(function () {
  "use strict";

  function refresh(element) {
    var busy = element.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
    if (busy) { return; }
    fetch(element.dataset.refresh, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { return null; }  // signed out, or a hiccup: keep what is shown
        return response.text();
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          element.innerHTML = html;
          tick();
        }
      })
      .catch(function () { /* the next round tries again */ });
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (element) {
      var left = Math.max(0, Math.round((Date.parse(element.dataset.deadline) - now) / 1000));
      element.textContent = left + " s";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(function (element) {
      var every = parseInt(element.dataset.every || "2000", 10);
      setInterval(function () { refresh(element); }, every);
    });
    tick();
    setInterval(tick, 1000);
  });
})();

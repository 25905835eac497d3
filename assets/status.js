// Live refresh: every 30 s, while the page is visible, fetch this same page and swap in its
// <main>. Everything else works without JavaScript.
(function () {
  "use strict";
  var every = 30000;
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var current = document.querySelector("main");
        if (next && current) { current.replaceWith(next); }
        var stamp = document.getElementById("refreshed");
        if (stamp) { stamp.textContent = "live, updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  var stamp = document.getElementById("refreshed");
  if (stamp) { stamp.textContent = "live"; }
  window.setInterval(refresh, every);
})();

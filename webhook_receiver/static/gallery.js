// Live progress bars: poll the gallery's progress endpoint while any shown batch is unfinished.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var SVG = "http://www.w3.org/2000/svg";

  function bars() {
    return Array.prototype.slice.call(document.querySelectorAll(".progress[data-batch]"));
  }

  function draw(el, p) {
    var svg = el.querySelector("svg.bar");
    svg.querySelectorAll("rect.seg").forEach(function (r) { r.remove(); });
    p.segments.forEach(function (s) {
      var r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", "seg seg-" + s.state);
      r.setAttribute("x", String(s.x));
      r.setAttribute("y", "0");
      r.setAttribute("width", String(s.w));
      r.setAttribute("height", "10");
      svg.appendChild(r);
    });
    svg.setAttribute("aria-label", p.done + " of " + p.total + " jobs finished");
    // textContent only: nothing from the server is ever parsed as HTML.
    el.querySelector(".js-done").textContent = String(p.done);
    el.querySelector(".js-total").textContent = String(p.total);
    el.querySelector(".js-pct").textContent = String(Math.round(p.progress * 100));
    el.dataset.done = p.total > 0 && p.done === p.total ? "1" : "0";
  }

  function poll() {
    var pending = bars().filter(function (el) { return el.dataset.done !== "1"; });
    if (pending.length === 0) { return; }
    var query = pending.map(function (el) {
      return "batch=" + encodeURIComponent(el.dataset.batch);
    }).join("&");
    fetch("/gallery/api/progress?" + query, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (data) {
          pending.forEach(function (el) {
            if (data[el.dataset.batch]) { draw(el, data[el.dataset.batch]); }
          });
        }
      })
      .catch(function () { /* a missed poll is retried at the next tick */ })
      .then(function () { window.setTimeout(poll, INTERVAL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (bars().length) { window.setTimeout(poll, INTERVAL_MS); }
  });
})();

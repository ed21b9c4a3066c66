/* Flowerbed's only script: local times, the live indicator, and pausing live refreshes in hidden tabs.
   Everything here is progressive enhancement: pages are complete without it. */
(function () {
  "use strict";

  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function utcTitle(d) {
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", "") + " UTC";
  }

  function localText(d, fmt) {
    var now = new Date();
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (fmt === "short") { return hm; }
    if (fmt === "day") { return MONTHS[d.getMonth()] + " " + d.getDate() + " " + hm; }
    var hms = hm + ":" + pad(d.getSeconds());
    if (d.toDateString() === now.toDateString()) { return hms; }
    var day = MONTHS[d.getMonth()] + " " + d.getDate();
    if (d.getFullYear() === now.getFullYear()) { return day + " " + hms; }
    return d.getFullYear() + " " + day + " " + hm;
  }

  function relText(d) {
    var s = Math.round((Date.now() - d.getTime()) / 1000);
    if (s < 0) { s = 0; }
    if (s < 60) { return s + " s ago"; }
    if (s < 3600) { return Math.floor(s / 60) + " min ago"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h ago"; }
    return Math.floor(s / 86400) + " d ago";
  }

  /* Server-rendered <time> elements hold UTC; show them in the browser's zone, UTC on hover. */
  function localizeTimes(root) {
    var nodes = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) { continue; }
      el.title = utcTitle(d);
      el.textContent = el.hasAttribute("data-rel") ? relText(d) : localText(d, el.getAttribute("data-fmt"));
    }
  }

  function refreshRelative() {
    var nodes = document.querySelectorAll("time[data-rel]");
    for (var i = 0; i < nodes.length; i++) {
      var d = new Date(nodes[i].getAttribute("datetime"));
      if (!isNaN(d.getTime())) { nodes[i].textContent = relText(d); }
    }
  }

  function setLive(state, text) {
    var dot = document.getElementById("live-dot");
    if (!dot) { return; }
    dot.setAttribute("data-state", state);
    dot.title = text;
  }

  /* A hidden tab skips live refreshes and catches up once when it is shown again. */
  var skipped = [];

  function onBeforeRequest(evt) {
    var elt = evt.detail && evt.detail.elt;
    if (!document.hidden || !elt || !elt.hasAttribute || !elt.hasAttribute("data-live")) { return; }
    evt.preventDefault();
    if (skipped.indexOf(elt) < 0) { skipped.push(elt); }
  }

  function onVisibility() {
    if (document.hidden) { return; }
    var pending = skipped;
    skipped = [];
    for (var i = 0; i < pending.length; i++) {
      if (document.body.contains(pending[i])) { window.htmx.trigger(pending[i], "fb:wake"); }
    }
    localizeTimes(document);
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    setInterval(refreshRelative, 5000);
    document.addEventListener("visibilitychange", onVisibility);
    if (!window.htmx) { return; }
    window.htmx.onLoad(function (elt) { localizeTimes(elt); });
    document.body.addEventListener("htmx:beforeRequest", onBeforeRequest);
    document.body.addEventListener("htmx:configRequest", function (evt) {
      /* Empty filters stay out of the URL, so pushed (bookmarkable) URLs read like the ones people type. */
      var p = evt.detail.parameters;
      if (!p || evt.detail.verb !== "get") { return; }
      Object.keys(p).forEach(function (k) { if (p[k] === "") { delete p[k]; } });
    });
    document.body.addEventListener("htmx:sseOpen", function () { setLive("on", "Live: updates arrive as jobs run"); });
    document.body.addEventListener("htmx:sseError", function () { setLive("off", "Live updates lost; reconnecting…"); });
    document.body.addEventListener("htmx:afterSwap", function (evt) {
      /* Fresh rows fade from a highlight; remove the class afterwards so a later swap does not replay it. */
      var target = evt.detail && evt.detail.target;
      if (!target || !target.querySelectorAll) { return; }
      var fresh = target.querySelectorAll("tr.fresh");
      window.setTimeout(function () {
        for (var i = 0; i < fresh.length; i++) { fresh[i].classList.remove("fresh"); }
      }, 4000);
    });
  });
})();

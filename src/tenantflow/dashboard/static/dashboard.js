// tenantflow dashboard: the only script of the pages (the Content-Security-Policy allows no
// inline script). A run's page follows the run's event stream and reloads its live part on
// each event; the fairness page refreshes itself every two seconds.
(function () {
  "use strict";

  function followRun() {
    var live = document.getElementById("live");
    if (!live || !live.dataset.events || !window.EventSource) return;
    var url = live.dataset.events;
    var source = null;
    var pending = false;
    function stillLive() {
      var now = document.getElementById("live");
      return now && now.dataset.events ? now : null;
    }
    function refresh() {
      pending = false;
      var current = stillLive();
      if (!current) return Promise.resolve(null);
      return htmx.ajax("GET", current.dataset.refresh, { target: "#live", swap: "outerHTML" })
        .then(function () {
          if (!stillLive() && source) source.close();  // the run has ended
          return stillLive();
        });
    }
    function connect() {
      source = new EventSource(url);
      source.onmessage = function () {
        // Events can come in bursts: redraw at most twice a second.
        if (!pending) { pending = true; window.setTimeout(refresh, 500); }
      };
      source.onerror = function () {
        // The server ends the stream after the run's last event; a dropped connection looks
        // the same. Redraw, and listen again only if the run is still going.
        source.close();
        refresh().then(function (running) {
          if (running) window.setTimeout(connect, 2000);
        });
      };
    }
    connect();
  }

  function pollFairness() {
    var box = document.getElementById("fair");
    if (!box || !box.dataset.poll) return;
    window.setInterval(function () {
      htmx.ajax("GET", box.dataset.poll, { target: "#fair", select: "#fair", swap: "outerHTML" });
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    followRun();
    pollFairness();
  });
})();

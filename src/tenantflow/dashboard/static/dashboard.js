// tenantflow dashboard: the only script of the pages (the Content-Security-Policy allows no
// inline script). A run's page follows the run's event stream and reloads its live part on
// each event; the fairness page refreshes itself every two seconds.
(function () {
  "use strict";

  function followRun() {
    var live = document.getElementById("live");
    if (!live || !live.dataset.events || !window.EventSource) return;
    var source = new EventSource(live.dataset.events);
    var pending = false;
    function refresh() {
      pending = false;
      var current = document.getElementById("live");
      if (!current || !current.dataset.refresh) { source.close(); return; }
      htmx.ajax("GET", current.dataset.refresh, { target: "#live", swap: "outerHTML" }).then(function () {
        var now = document.getElementById("live");
        if (!now || !now.dataset.events) source.close();  // the run has ended
      });
    }
    source.onmessage = function () {
      if (!pending) { pending = true; window.setTimeout(refresh, 150); }
    };
    source.onerror = function () {
      // The server ends the stream after the run's last event: reload once and stop.
      source.close();
      refresh();
    };
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

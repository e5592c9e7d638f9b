// PyGrid dashboards: the little the pages need from JavaScript. Loaded as a file (the pages'
// Content-Security-Policy allows no inline script); page data comes from JSON blocks.
"use strict";

(function () {
  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // Per-cycle metrics of an FL process: <canvas data-chart="ID"> reads <script id="ID"
  // type="application/json">{"cycles": [...], "series": {"accuracy": [...], "loss": [...]}}.
  function drawCharts() {
    var canvases = document.querySelectorAll("canvas[data-chart]");
    Array.prototype.forEach.call(canvases, function (canvas) {
      var source = document.getElementById(canvas.dataset.chart);
      var data = JSON.parse(source.textContent);
      var colours = { accuracy: "#1f7a3a", loss: "#b3261e" };
      var datasets = Object.keys(data.series).map(function (name) {
        return {
          label: name,
          data: data.series[name],
          yAxisID: name === "loss" ? "loss" : "y",
          borderColor: colours[name] || "#2458c6",
          backgroundColor: colours[name] || "#2458c6",
          tension: 0.2,
          spanGaps: true,
        };
      });
      if (typeof window.Chart !== "function") {
        canvas.replaceWith(document.createTextNode("The chart library did not load."));
        return;
      }
      new window.Chart(canvas, {
        type: "line",
        data: { labels: data.cycles, datasets: datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: { title: { display: true, text: "cycle" } },
            y: { position: "left", title: { display: true, text: "accuracy" } },
            loss: { position: "right", title: { display: true, text: "loss" },
                    grid: { drawOnChartArea: false } },
          },
        },
      });
      canvas.dataset.rendered = String(data.cycles.length);
    });
  }

  // The Network's search box: GET /search?q=&tags= (public JSON), results as a table.
  function wireSearch() {
    var form = document.querySelector("form[data-search]");
    if (!form) return;
    var status = document.getElementById("search-status");
    var body = document.querySelector("#search-results tbody");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var params = new URLSearchParams();
      var q = form.elements.q.value.trim();
      var tags = form.elements.tags.value.trim();
      if (q) params.set("q", q);
      if (tags) params.set("tags", tags);
      status.textContent = "Searching…";
      fetch(form.action + "?" + params.toString(), { headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json().then(function (answer) {
            if (!response.ok) throw new Error(answer.error || response.statusText);
            return answer;
          });
        })
        .then(function (answer) {
          body.replaceChildren();
          answer.results.forEach(function (hit) {
            var row = document.createElement("tr");
            var ds = hit.dataset || {};
            cell(row, hit.node_id);
            cell(row, "").appendChild(badge(hit.node_status));
            cell(row, ds.name);
            cell(row, ds.description);
            cell(row, (ds.tags || []).join(", "));
            cell(row, ds.rows, "num");
            body.appendChild(row);
          });
          var missing = (answer.unanswered || []).length;
          status.textContent =
            answer.results.length + " result" + (answer.results.length === 1 ? "" : "s") +
            " from " + answer.nodes_searched + " Node" + (answer.nodes_searched === 1 ? "" : "s") +
            (missing ? " (" + missing + " did not answer)" : "");
          status.dataset.count = String(answer.results.length);
        })
        .catch(function (error) {
          body.replaceChildren();
          status.textContent = "Search failed: " + error.message;
          status.dataset.count = "error";
        });
    });
  }

  function badge(text) {
    var span = document.createElement("span");
    span.className = "badge " + String(text || "");
    span.textContent = text || "";
    return span;
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    wireSearch();
  });
})();

// Shared Plotly settings of the dashboard's plots. Captions are plain text; Plotly reads a
// little HTML in axis titles and legend entries, so user strings there go through plotText.
var DashboardPlots = (function () {
  "use strict";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#c026d3", "#65a30d", "#475569", "#b45309"];

  function plotText(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function layout(yTitle) {
    return {
      margin: { l: 60, r: 20, t: 36, b: 44 },
      xaxis: { title: { text: "iteration" }, zeroline: false, gridcolor: "#eef1f4" },
      yaxis: { title: { text: yTitle }, zeroline: false, gridcolor: "#eef1f4" },
      legend: { orientation: "h", y: -0.2 },
      hovermode: "closest",
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif", size: 12, color: "#1f2933" }
    };
  }

  // A <figure> with a caption (plain text: no escaping needed) and an empty plot element.
  function figure(caption, higherIsBetter, note) {
    var element = document.createElement("figure");
    element.className = "plot-figure";
    var title = document.createElement("figcaption");
    title.textContent = caption;
    if (higherIsBetter !== null && higherIsBetter !== undefined) {
      var direction = document.createElement("span");
      direction.className = "direction";
      direction.textContent = (higherIsBetter ? "\u2191 higher is better" : "\u2193 lower is better") + (note ? " \u00b7 " + note : "");
      title.appendChild(direction);
    }
    var plot = document.createElement("div");
    plot.className = "plot";
    element.appendChild(title);
    element.appendChild(plot);
    return { element: element, plot: plot };
  }

  var CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function draw(element, traces, plotLayout) {
    return Plotly.newPlot(element, traces, plotLayout, CONFIG).then(function () {
      element.setAttribute("data-drawn", "true");
    });
  }

  function fetchJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error(data.error || response.statusText); }
        return data;
      });
    });
  }

  function showError(element, error) {
    var message = document.createElement("p");
    message.className = "empty";
    message.textContent = "Could not load the data: " + error.message;
    element.appendChild(message);
  }

  function bestMarker(best, color, name) {
    return {
      x: [best.iteration], y: [best.value], mode: "markers", type: "scatter", name: name,
      marker: { symbol: "star", size: 15, color: color, line: { color: "#111827", width: 1 } },
      hovertemplate: "best: %{y:.4g} at iteration %{x}<extra></extra>"
    };
  }

  return { COLORS: COLORS, plotText: plotText, layout: layout, figure: figure, draw: draw, fetchJSON: fetchJSON,
           showError: showError, bestMarker: bestMarker };
})();

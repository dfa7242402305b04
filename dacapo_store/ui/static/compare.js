// The compare page: filter the run choices, and draw the chosen runs' curves on one plot.
(function () {
  "use strict";
  var P = DashboardPlots;
  var filter = document.getElementById("choice-filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var needle = filter.value.trim().toLowerCase();
      document.querySelectorAll(".choice").forEach(function (choice) {
        choice.hidden = (choice.getAttribute("data-name") || "").toLowerCase().indexOf(needle) === -1;
      });
    });
  }
  var container = document.getElementById("compare-plot");
  if (!container) { return; }
  var element;
  P.fetchJSON(container.getAttribute("data-api")).then(function (data) {
    var traces = [];
    var direction = null;
    data.runs.forEach(function (curve, index) {
      var color = P.COLORS[index % P.COLORS.length];
      var name = P.plotText(curve.run);
      traces.push({ x: curve.iterations, y: curve.values, type: "scatter", mode: "lines+markers", name: name,
        legendgroup: "run" + index, line: { color: color, width: 2 }, marker: { size: 5 },
        hovertemplate: "iteration %{x}: %{y:.4g}<extra>" + name + "</extra>" });
      if (curve.best) {
        var marker = P.bestMarker(curve.best, color, "best of " + name);
        marker.legendgroup = "run" + index;
        marker.showlegend = false;
        traces.push(marker);
      }
      if (curve.higher_is_better !== null) { direction = curve.higher_is_better; }
    });
    var figure = P.figure(data.dataset + " / " + data.criterion + " (\u2605 best of each run)", direction);
    element = figure.plot;
    element.id = "compare-curves";
    container.appendChild(figure.element);
    return P.draw(element, traces, P.layout(P.plotText(data.criterion)));
  }).catch(function (error) { P.showError(container, error); });
})();

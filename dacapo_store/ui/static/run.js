// A run page: the training loss with its moving mean, and one plot per validation dataset and
// criterion with its best iteration marked, from /api/run.
(function () {
  "use strict";
  var P = DashboardPlots;
  var container = document.getElementById("run-plots");

  function drawLoss(loss) {
    var element = document.getElementById("loss-plot");
    if (!element) { return; }
    var traces = [
      { x: loss.iterations, y: loss.loss, type: "scatter", mode: "lines", name: "loss",
        line: { color: "#93c5fd", width: 1 }, hovertemplate: "iteration %{x}: %{y:.4g}<extra>loss</extra>" },
      { x: loss.iterations, y: loss.mean, type: "scatter", mode: "lines", name: "moving mean (" + loss.window + " iterations)",
        line: { color: "#1d4ed8", width: 2.5 }, hovertemplate: "iteration %{x}: %{y:.4g}<extra>moving mean</extra>" }
    ];
    return P.draw(element, traces, P.layout("loss"));
  }

  function drawScores(curves) {
    var grid = document.getElementById("score-plots");
    if (!grid) { return; }
    var elements = curves.map(function (curve, index) {  // all in the grid before any is drawn
      var note = curve.best ? "\u2605 " + curve.best.value.toPrecision(4) + " at " + curve.best.iteration : "no usable score";
      var figure = P.figure(curve.dataset + " / " + curve.criterion, curve.higher_is_better, note);
      figure.plot.id = "score-plot-" + index;
      figure.plot.classList.add("score-plot");
      grid.appendChild(figure.element);
      return figure.plot;
    });
    curves.forEach(function (curve, index) {
      var color = P.COLORS[index % P.COLORS.length];
      var traces = [{ x: curve.iterations, y: curve.values, type: "scatter", mode: "lines+markers",
        name: P.plotText(curve.criterion), line: { color: color, width: 2 }, marker: { size: 5 },
        hovertemplate: "iteration %{x}: %{y:.4g}<extra></extra>" }];
      if (curve.best) { traces.push(P.bestMarker(curve.best, color, "best (iteration " + curve.best.iteration + ")")); }
      var plotLayout = P.layout(P.plotText(curve.criterion));
      plotLayout.showlegend = false;
      P.draw(elements[index], traces, plotLayout);
    });
  }

  P.fetchJSON(container.getAttribute("data-api"))
    .then(function (run) { drawLoss(run.loss); drawScores(run.scores); })
    .catch(function (error) { P.showError(container, error); });
})();

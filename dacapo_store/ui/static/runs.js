// The runs page: sort by a column, filter by name, and fetch the rows again every few seconds.
(function () {
  "use strict";
  var table = document.getElementById("runs");
  var body = document.getElementById("run-rows");
  var filter = document.getElementById("run-filter");
  var count = document.getElementById("run-count");
  var none = document.getElementById("no-runs");
  var sortKey = "name", ascending = true;

  function value(row, key, type) {
    var text = row.getAttribute("data-" + key) || "";
    return type === "number" ? parseFloat(text) : text.toLowerCase();
  }

  // Names in natural order: demo-40 before demo-120.
  function byName(x, y) { return x.localeCompare(y, undefined, { numeric: true }); }

  function arrange() {
    var header = table.querySelector('th[data-key="' + sortKey + '"]');
    var type = header.getAttribute("data-type");
    var rows = Array.prototype.slice.call(body.querySelectorAll("tr.run-row"));
    rows.sort(function (a, b) {
      var x = value(a, sortKey, type), y = value(b, sortKey, type);
      var order = type === "text" ? byName(x, y) : x < y ? -1 : x > y ? 1 : 0;
      if (order === 0) { order = byName(value(a, "name", "text"), value(b, "name", "text")); }
      return ascending ? order : -order;
    });
    var needle = filter.value.trim().toLowerCase(), shown = 0;
    rows.forEach(function (row) {
      var match = value(row, "name", "text").indexOf(needle) !== -1;
      row.hidden = !match;
      if (match) { shown += 1; }
      body.appendChild(row);
    });
    count.textContent = needle ? shown + " of " + rows.length : String(rows.length);
    none.hidden = shown > 0;
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      if (th.getAttribute("data-key") === sortKey) {
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
  }

  table.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      ascending = key === sortKey ? !ascending : th.getAttribute("data-type") === "text";
      sortKey = key;
      arrange();
    });
  });
  filter.addEventListener("input", arrange);

  function refresh() {
    fetch(table.getAttribute("data-rows-url"), { headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) { body.innerHTML = html; arrange(); table.setAttribute("data-refreshed", String(Date.now())); })
      .catch(function () { /* the next refresh tries again */ });
  }
  setInterval(refresh, 1000 * parseFloat(table.getAttribute("data-refresh-seconds")));
  arrange();
})();

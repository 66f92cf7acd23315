// Draws /admin/usage/'s charts from the page's JSON (no inline script: the CSP allows only files).
(function () {
  "use strict";
  const node = document.getElementById("usage-data");
  if (!node || !window.Chart) return;
  const data = JSON.parse(node.textContent);
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  window.Chart.defaults.color = dark ? "#ddd" : "#333";
  window.Chart.defaults.animation = false;
  const colors = ["#417690", "#79aec8", "#e0a33b", "#5b9b5b", "#b55d5d", "#8a6fb5"];

  function chart(id, config) {
    const canvas = document.getElementById(id);
    if (canvas) new window.Chart(canvas, { ...config, options: { maintainAspectRatio: false, responsive: true, ...config.options } });
  }
  function bars(id, series) {
    chart(id, {
      type: "bar",
      data: { labels: series.labels, datasets: [{ label: "USD", data: series.cost, backgroundColor: colors[0] }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } } },
    });
  }

  chart("chart-tokens", {
    type: "bar",
    data: {
      labels: data.days.labels,
      datasets: [
        { label: "input (not cached)", data: data.days.input_tokens.map((n, i) => n - data.days.cached_input_tokens[i]), backgroundColor: colors[0] },
        { label: "cached input", data: data.days.cached_input_tokens, backgroundColor: colors[1] },
        { label: "output", data: data.days.output_tokens, backgroundColor: colors[2] },
      ],
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  chart("chart-cost", {
    type: "line",
    data: { labels: data.days.labels, datasets: [{ label: "USD", data: data.days.cost, borderColor: colors[3], backgroundColor: colors[3], fill: false, tension: 0.2 }] },
    options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
  });
  bars("chart-models", data.models);
  bars("chart-personas", data.personas);
  bars("chart-users", data.users);
})();

/* The figures page's charts: drawn from the same numbers as its tables, read from the
   <script type="application/json" id="figures-data"> block (no inline script: the CSP). */
(function () {
  "use strict";
  var block = document.getElementById("figures-data");
  if (!block || typeof window.Chart === "undefined") { return; }
  var data;
  try { data = JSON.parse(block.textContent); } catch (e) { return; }
  var Chart = window.Chart;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.animation = false;

  var rec = document.getElementById("chart-recognitions");
  if (rec) {
    new Chart(rec, {
      data: {
        labels: data.labels,
        datasets: [
          { type: "bar", label: "开单项目数", data: data.orders, backgroundColor: "#bcccdc", yAxisID: "y" },
          { type: "bar", label: "可互认", data: data.recognisable, backgroundColor: "#0b6bcb", yAxisID: "y" },
          { type: "line", label: "互认率 %", yAxisID: "rate", borderColor: "#1f7a3a",
            backgroundColor: "#1f7a3a",
            data: data.rate.map(function (r) { return Math.round(r * 1000) / 10; }) }
        ]
      },
      options: {
        responsive: true, maintainAspectRatio: false,
        scales: {
          y: { beginAtZero: true, title: { display: true, text: "项目数" } },
          rate: { position: "right", min: 0, max: 100, grid: { drawOnChartArea: false },
                  title: { display: true, text: "互认率 %" } }
        }
      }
    });
  }

  var saving = document.getElementById("chart-saving");
  if (saving) {
    new Chart(saving, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [{ label: "节省费用（元）", backgroundColor: "#b54708",
                     data: data.saving_yuan.map(function (v) { return parseFloat(v); }) }]
      },
      options: { responsive: true, maintainAspectRatio: false,
                 scales: { y: { beginAtZero: true } } }
    });
  }
})();

// The report's charts, drawn by the vendored Apache ECharts from the data the
// server put in data-chart (api/routes/report_pages.py: funnel_data, series_data).
const COLORS = {
  planned: "#c8e1ff",
  sent: "#1a7f37",
  failed: "#cf222e",
  missed: "#d4a72c",
  pending: "#afb8c1",
};

function chartOption(data) {
  const narrow = window.matchMedia("(max-width: 640px)").matches;
  if (data.kind === "funnel") {
    return {
      animation: false,
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      legend: { top: 0 },
      grid: { left: 8, right: narrow ? 90 : 140, top: 30, bottom: 8, containLabel: true },
      xAxis: { type: "value", minInterval: 1 },
      yAxis: { type: "category", inverse: true, data: data.categories },
      series: data.series.map((s, i) => ({
        name: s.name,
        type: "bar",
        data: s.data,
        barGap: "-100%",
        itemStyle: { color: COLORS[s.css] },
        label: i === 1 ? { show: true, position: "right", formatter: (p) => data.labels[p.dataIndex] } : undefined,
      })),
    };
  }
  return {
    animation: false,
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    legend: { top: 0 },
    grid: { left: 8, right: 8, top: 36, bottom: 8, containLabel: true },
    xAxis: { type: "category", data: data.categories },
    yAxis: { type: "value", minInterval: 1 },
    series: data.series.map((s) => ({
      name: s.name,
      type: "bar",
      stack: "all",
      data: s.data,
      itemStyle: { color: COLORS[s.css] },
    })),
  };
}

document.addEventListener("DOMContentLoaded", () => {
  if (!window.echarts) return;
  const charts = [];
  document.querySelectorAll(".echart[data-chart]").forEach((element) => {
    const data = JSON.parse(element.dataset.chart);
    const rows = data.kind === "funnel" ? data.categories.length : 0;
    element.style.height = (data.kind === "funnel" ? Math.max(140, 60 + rows * 40) : 280) + "px";
    const chart = window.echarts.init(element, null, { renderer: "canvas" });
    chart.setOption(chartOption(data));
    charts.push(chart);
  });
  window.addEventListener("resize", () => charts.forEach((chart) => chart.resize()));
});

// Small SVG line charts (no chart library: the page works offline and ships as package data).
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#65a30d"];

function svgEl(name, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(min, max, count) {
  if (!isFinite(min) || !isFinite(max)) return [];
  if (min === max) { const pad = Math.abs(min) * 0.1 || 1; min -= pad; max += pad; }
  const raw = (max - min) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function formatTick(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return +v.toPrecision(4) + "";
}

// series: [{name, points: [[x, y], ...]}]; options: {title, xLabel, height}
function lineChart(series, options) {
  const opts = Object.assign({height: 200, xLabel: ""}, options || {});
  const W = 460, H = opts.height, L = 52, R = 12, T = 26, B = 34;
  const box = document.createElement("figure");
  box.className = "chart";
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title || "chart"});
  box.appendChild(svg);
  svg.appendChild(svgEl("text", {x: L, y: 16, class: "chart-title"}, opts.title || ""));
  const pts = series.flatMap(s => s.points.filter(p => isFinite(p[0]) && isFinite(p[1])));
  if (!pts.length) {
    svg.appendChild(svgEl("text", {x: W / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle"}, opts.empty || "—"));
    return box;
  }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const yPad = (y1 - y0) * 0.06; y0 -= yPad; y1 += yPad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (const t of niceTicks(y0, y1, 4)) {
    if (t < y0 || t > y1) continue;
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid"}));
    svg.appendChild(svgEl("text", {x: L - 6, y: sy(t) + 4, class: "tick", "text-anchor": "end"}, formatTick(t)));
  }
  for (const t of niceTicks(x0, x1, 5)) {
    if (t < x0 || t > x1) continue;
    svg.appendChild(svgEl("text", {x: sx(t), y: H - B + 15, class: "tick", "text-anchor": "middle"}, formatTick(t)));
  }
  svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}));
  svg.appendChild(svgEl("text", {x: W - R, y: H - 4, class: "axis-label", "text-anchor": "end"}, opts.xLabel));
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const good = s.points.filter(p => isFinite(p[0]) && isFinite(p[1]));
    if (!good.length) return;
    const d = good.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", {d, class: "line", stroke: color}));
    if (good.length <= 40) for (const p of good) svg.appendChild(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: color}));
    const last = good[good.length - 1];
    const title = svgEl("title", {}, `${s.name}: ${formatTick(last[1])}`);
    svg.lastChild.appendChild(title);
  });
  if (series.length > 1 || (series[0] && series[0].name)) {
    const legend = document.createElement("figcaption");
    series.forEach((s, i) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      const sw = document.createElement("i");
      sw.style.background = s.color || PALETTE[i % PALETTE.length];
      item.append(sw, document.createTextNode(s.name));
      legend.appendChild(item);
    });
    box.appendChild(legend);
  }
  return box;
}

window.kitaeCharts = {lineChart, PALETTE};

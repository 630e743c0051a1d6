// PULSE web view: a small line chart drawn as SVG, no library.
//
// PulseChart.draw(container, points, band) replaces the container's content with
// an SVG line of `points` ([[time, value], ...], time in seconds) over an optional
// min/max `band` ([[t0, t1, min, max], ...]) with labelled axes. Every label is set
// with textContent: nothing here parses markup.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640;
  const H = 220;
  const PAD = { left: 64, right: 12, top: 10, bottom: 28 };

  function el(name, attrs) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function text(x, y, value, anchor, cls) {
    const node = el("text", { x, y, "text-anchor": anchor, class: cls || "axis-label" });
    node.textContent = value;
    return node;
  }

  function formatValue(v) {
    if (!Number.isFinite(v)) return "";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return Number(v.toPrecision(4)).toString();
  }

  function formatSpan(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  // Draw; returns false (and draws nothing) when there is no line to show.
  function draw(container, points, band) {
    const finite = points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    container.replaceChildren();
    if (finite.length < 2) return false;
    const boxes = (band || []).filter((b) => b.every(Number.isFinite));
    let t0 = finite[0][0];
    let t1 = finite[finite.length - 1][0];
    let lo = Infinity;
    let hi = -Infinity;
    for (const [, v] of finite) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    for (const b of boxes) {
      t0 = Math.min(t0, b[0]); t1 = Math.max(t1, b[1]);
      lo = Math.min(lo, b[2]); hi = Math.max(hi, b[3]);
    }
    if (hi === lo) { const d = Math.abs(hi) * 0.01 || 1; hi += d; lo -= d; }
    const margin = (hi - lo) * 0.05;
    const nonNegative = lo >= 0;
    hi += margin; lo -= margin;
    if (nonNegative && lo < 0) lo = 0; // a loss never goes below 0: no axis label says it does
    if (t1 === t0) t1 = t0 + 1;
    const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
    const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);

    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg" });
    const title = el("title");
    title.textContent = `loss, ${finite.length} points`;
    svg.appendChild(title);
    svg.appendChild(el("rect", {
      x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right,
      height: H - PAD.top - PAD.bottom, class: "plot-area",
    }));
    for (const frac of [0, 0.5, 1]) {
      const v = lo + (hi - lo) * frac;
      const yy = y(v);
      svg.appendChild(el("line", { x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy, class: "grid" }));
      svg.appendChild(text(PAD.left - 6, yy + 4, formatValue(v), "end"));
    }
    if (boxes.length) {
      const upper = boxes.map((b) => `${x((b[0] + b[1]) / 2).toFixed(1)},${y(b[3]).toFixed(1)}`);
      const lower = boxes.slice().reverse()
        .map((b) => `${x((b[0] + b[1]) / 2).toFixed(1)},${y(b[2]).toFixed(1)}`);
      svg.appendChild(el("polygon", { points: upper.concat(lower).join(" "), class: "band" }));
    }
    const line = finite.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(el("polyline", { points: line, class: "line" }));
    const last = finite[finite.length - 1];
    svg.appendChild(el("circle", { cx: x(last[0]), cy: y(last[1]), r: 3.5, class: "last" }));
    svg.appendChild(text(PAD.left, H - 8, `${formatSpan(t1 - t0)} shown`, "start"));
    svg.appendChild(text(W - PAD.right, H - 8, `latest ${formatValue(last[1])}`, "end"));
    container.appendChild(svg);
    return true;
  }

  window.PulseChart = { draw, formatValue };
})();

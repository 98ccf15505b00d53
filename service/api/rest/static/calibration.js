// The explorer's calibration panel: the served version's temperature, ECE before and after, and
// its reliability diagram drawn from the card's bins (GET /v1/models/{name}; no image file).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PLOT = { size: 220, pad: 28 };

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function reliabilityDiagram(bins) {
  // One bar per probability bin at its accuracy, a tick at its mean confidence, the diagonal.
  const { size, pad } = PLOT;
  const x = (p) => pad + p * size;
  const y = (p) => pad + (1 - p) * size;
  const plot = svg("svg", { id: "reliability", width: size + 2 * pad, height: size + 2 * pad,
    role: "img", "aria-label": "reliability diagram: accuracy against confidence per bin" });
  plot.append(svg("rect", { x: pad, y: pad, width: size, height: size, fill: "none", stroke: "#ddd" }));
  plot.append(svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#999", "stroke-dasharray": "4 3" }));
  const width = size / bins.length;
  bins.forEach((b, i) => {
    if (!b.count) return;
    plot.append(svg("rect", { class: "bin", x: x(i / bins.length) + 1, y: y(b.accuracy), width: width - 2,
      height: Math.max(0, y(0) - y(b.accuracy)), fill: "#3b528b", "fill-opacity": 0.75 }));
    plot.append(svg("line", { x1: x(i / bins.length), x2: x((i + 1) / bins.length),
      y1: y(b.mean_confidence), y2: y(b.mean_confidence), stroke: "#a40000", "stroke-width": 2 }));
  });
  for (const [text, attrs] of [["confidence", { x: x(0.5), y: y(0) + 22 }],
    ["accuracy", { x: 10, y: y(0.5), transform: `rotate(-90 10 ${y(0.5)})` }]]) {
    const label = svg("text", { ...attrs, "text-anchor": "middle", "font-size": 11, fill: "#666" });
    label.textContent = text;
    plot.append(label);
  }
  return plot;
}

async function showCalibration(model) {
  const box = $("calibration");
  try {
    const { card } = await api(`/v1/models/${encodeURIComponent(model)}`);
    const c = card.calibration || {};
    if (c.temperature === undefined) {
      box.replaceChildren(el("p", { class: "muted" }, `${model} v${card.version}: no calibration in its card.`));
      return;
    }
    const summary = `${model} v${card.version}: T = ${c.temperature.toFixed(4)}, ` +
      `test ECE ${c.ece_before.toFixed(4)} before, ${c.ece_after.toFixed(4)} after ` +
      `(fitted on ${c.n_fit} held-out training images)`;
    box.replaceChildren(el("p", { id: "calibration-summary" }, summary),
      reliabilityDiagram(c.reliability || []),
      el("p", { class: "muted" }, "Bars: accuracy per top-1 probability bin on the test split " +
        "(after calibration); red ticks: the bin's mean confidence; dashed: perfect calibration."));
  } catch (error) {
    box.replaceChildren(el("p", { class: "muted" }, `No card: ${error.message}`));
  }
}

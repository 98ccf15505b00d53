// The explorer's monitoring panel: the served version's GET /v1/models/{name}/monitor drawn as
// inline SVG built by DOM calls (the page's CSP allows no inline script, style attribute or
// outside load). Uses page.js's $, el and api: a classic script loaded before this one.
// Read on opening the tab, on the Refresh button and on a model or window change; never polled.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
let monitorAsked = 0;  // the latest request: an older answer arriving late is dropped

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const total = (counts) => counts.reduce((a, b) => a + b, 0);
const shares = (counts) => { const n = total(counts); return counts.map((c) => (n ? c / n : 0)); };
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

function windowText(seconds) {
  if (seconds % 86400 === 0) return plural(seconds / 86400, "day");
  if (seconds % 3600 === 0) return plural(seconds / 3600, "hour");
  if (seconds % 60 === 0) return plural(seconds / 60, "minute");
  return `${seconds} s`;
}

function badge(text, kind) { return el("span", { class: `state ${kind}` }, text); }

// -- charts ----------------------------------------------------------------------------------

// Paired bars, one group per label: the served share (counts) beside the reference's share.
function pairedBars(labels, counts, reference, caption) {
  const served = shares(counts);
  const rotate = labels.length > 12;
  const left = 44, bottom = rotate ? 70 : 28, top = 10, group = Math.max(14, 720 / labels.length);
  const width = left + group * labels.length, height = 190 + bottom;
  const most = Math.max(0.01, ...served, ...(reference || []));
  const y = (f) => top + (height - bottom - top) * (1 - f / most);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": caption });
  for (const f of [0, most / 2, most]) {
    chart.append(svg("line", { x1: left, x2: width, y1: y(f), y2: y(f), class: f ? "grid" : "axis" }),
      svg("text", { x: left - 4, y: y(f) + 4, "text-anchor": "end", class: "tick" }, pct(f)));
  }
  const bar = group * (reference ? 0.4 : 0.8);
  labels.forEach((label, i) => {
    const x = left + i * group + group * 0.1;
    chart.append(svg("rect", { x, y: y(served[i]), width: bar, height: y(0) - y(served[i]),
      class: "served" }, svg("title", {}, `${label}: served ${pct(served[i])} (${count(counts[i])})`)));
    if (reference) {
      chart.append(svg("rect", { x: x + bar, y: y(reference[i]), width: bar,
        height: y(0) - y(reference[i]), class: "reference" },
      svg("title", {}, `${label}: reference ${pct(reference[i])}`)));
    }
    const cx = left + (i + 0.5) * group, ly = height - bottom + 14;
    chart.append(svg("text", rotate
      ? { x: cx, y: ly, "text-anchor": "end", transform: `rotate(-50 ${cx} ${ly})`, class: "tick" }
      : { x: cx, y: ly, "text-anchor": "middle", class: "tick" }, label));
  });
  return chart;
}

function legend(predictions, reference) {
  return el("p", { class: "legend" }, el("span", { class: "swatch served" }),
    `served (${plural(predictions, "prediction")})`,
    reference ? el("span", { class: "swatch reference" }) : "",
    reference ? "card's reference (test split)" : " - no reference on this card: nothing to compare with");
}

// The drift score as a bar on a scale, with the threshold and the noise floor marked on it.
function driftMeter(drift, drifting) {
  const width = 420, left = 8, right = 8, most = 1.25 * Math.max(drift.score, drift.threshold, drift.noise_floor);
  const x = (v) => left + (width - left - right) * (v / most);
  const meter = svg("svg", { viewBox: `0 0 ${width} 56`, class: "chart meter", role: "img",
    "aria-label": "drift score against the threshold and the noise floor" },
  svg("rect", { x: left, y: 18, width: x(most) - left, height: 14, class: "track" }),
  svg("rect", { x: left, y: 18, width: x(drift.score) - left, height: 14,
    class: drifting ? "score drifting" : "score" }, svg("title", {}, `score ${drift.score.toFixed(3)}`)));
  // threshold named above the bar, noise floor below: the two are often close
  for (const [value, kind, label, y] of [[drift.threshold, "threshold", "threshold", 11],
    [drift.noise_floor, "floor", "noise floor", 52]]) {
    meter.append(svg("line", { x1: x(value), x2: x(value), y1: 14, y2: 36, class: kind }),
      svg("text", { x: x(value), y, "text-anchor": "middle", class: "tick" },
        `${label} ${value.toFixed(3)}`));
  }
  return meter;
}

// Accuracy against confidence per bin, with the diagonal a calibrated model lies on.
function reliabilityChart(cardBins, liveBins) {
  const size = 300, pad = 36, span = size - 2 * pad;
  const x = (v) => pad + span * v, y = (v) => size - pad - span * v;
  const chart = svg("svg", { viewBox: `0 0 ${size} ${size}`, class: "chart", role: "img",
    "aria-label": "reliability diagram: accuracy against confidence" });
  for (const v of [0, 0.5, 1]) {
    chart.append(
      svg("line", { x1: x(0), x2: x(1), y1: y(v), y2: y(v), class: v ? "grid" : "axis" }),
      svg("line", { x1: x(v), x2: x(v), y1: y(0), y2: y(1), class: v ? "grid" : "axis" }),
      svg("text", { x: x(0) - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" }, String(v)),
      svg("text", { x: x(v), y: y(0) + 14, "text-anchor": "middle", class: "tick" }, String(v)));
  }
  chart.append(svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diagonal" }),
    svg("text", { x: x(0.5), y: size - 4, "text-anchor": "middle", class: "tick" }, "confidence"),
    svg("text", { x: 10, y: y(0.5), "text-anchor": "middle", class: "tick",
      transform: `rotate(-90 10 ${y(0.5)})` }, "accuracy"));
  const used = (bins) => bins.filter((b) => b.count > 0);
  const card = used(cardBins);
  if (card.length) {
    chart.append(svg("polyline", { class: "card-line",
      points: card.map((b) => `${x(b.mean_confidence)},${y(b.accuracy)}`).join(" ") }));
  }
  for (const [bins, kind, who] of [[card, "card-point", "card"], [used(liveBins), "live-point", "live"]]) {
    for (const b of bins) {
      chart.append(svg("circle", { cx: x(b.mean_confidence), cy: y(b.accuracy), r: kind === "live-point" ? 3.5 : 3,
        class: kind }, svg("title", {}, `${who}: confidence ${pct(b.mean_confidence)}, ` +
        `accuracy ${pct(b.accuracy)} (${count(b.count)})`)));
    }
  }
  return chart;
}

// -- the panel's parts -----------------------------------------------------------------------

function showDrift(report) {
  const { drift, predicted_classes: classes, top1_probability: probability } = report;
  const box = $("monitor-drift");
  const parts = (d) => (d.drift === null ? "-" : d.drift.toFixed(3));
  if (!report.predictions) {
    box.dataset.state = "empty";
    box.replaceChildren(badge("no predictions", "unknown"), "nothing was served in this window.");
  } else if (drift.score === null) {
    box.dataset.state = "no-reference";
    box.replaceChildren(badge("no reference", "unknown"),
      "this model's card carries no reference (an export before issue 27), so drift is not scored.");
  } else {
    const state = drift.drifting ? "drifting" : drift.score > drift.threshold ? "noise" : "steady";
    box.dataset.state = state;
    const label = { drifting: "drifting", noise: "under the noise floor", steady: "steady" }[state];
    box.replaceChildren(badge(label, state === "drifting" ? "drifting" : state === "noise" ? "unknown" : "ok"),
      "score ", el("strong", {}, drift.score.toFixed(3)),
      ` (classes ${parts(classes)}, probabilities ${parts(probability)}) against the threshold ` +
      `${drift.threshold.toFixed(3)}; noise floor ${drift.noise_floor.toFixed(3)} ` +
      `(what sampling alone reaches at ${plural(report.predictions, "prediction")}, 95%).`,
      driftMeter(drift, drift.drifting));
  }
}

// The card's accuracy on the test split re-encoded as JPEG (issue 27's export), "" without it:
// shifted traffic is better compared with these than with the clean figure.
async function jpegAccuracy(model, version) {
  try {
    const { card } = await api(`/v1/models/${encodeURIComponent(model)}` + `?version=${version}`);
    const metrics = card.metrics || {};
    const parts = [50, 30].filter((q) => typeof metrics[`test_accuracy_jpeg_q${q}`] === "number")
      .map((q) => `q${q} ${pct(metrics[`test_accuracy_jpeg_q${q}`])}`);
    return parts.length ? ` (JPEG ${parts.join(", ")})` : "";
  } catch (error) {
    return "";  // the monitor answered; the card's extra figures are only a nicety
  }
}

function showAccuracy(labelled, jpeg) {
  const box = $("monitor-accuracy");
  const card = labelled.card_accuracy === null ? "the card states no test accuracy"
    : `the card's test accuracy ${pct(labelled.card_accuracy)}${jpeg}`;
  if (!labelled.n) {
    box.dataset.state = "empty";
    box.replaceChildren(badge("no feedback", "unknown"),
      `no labelled predictions in this window (POST /v1/feedback); ${card}.`);
    return;
  }
  const [low, high] = labelled.interval;
  const below = labelled.card_accuracy !== null && high < labelled.card_accuracy;
  box.dataset.state = below ? "below" : "ok";
  box.replaceChildren(badge(below ? "below the card" : "consistent", below ? "below" : "ok"),
    el("strong", {}, pct(labelled.accuracy)),
    ` (95% interval ${pct(low)}-${pct(high)}, ${count(labelled.correct)} right of ` +
    `${count(labelled.n)} labelled) against ${card}` +
    (labelled.ece === null ? "." : `; live ECE ${pct(labelled.ece)}.`));
}

function showCalibration(calibration, labelled) {
  const text = $("monitor-calibration"), chart = $("monitor-reliability"), table = $("monitor-coverage");
  const live = labelled.reliability || [];
  if (!calibration) {
    text.replaceChildren(badge("no calibration", "unknown"),
      "this model's card has no calibration block (exported before temperature scaling).");
    chart.replaceChildren(...(labelled.n ? [reliabilityChart([], live), liveLegend(labelled.n)] : []));
    table.replaceChildren();
    return;
  }
  const number = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "-");
  const ece = (v) => (typeof v === "number" ? pct(v) : "-");
  text.replaceChildren(`Temperature T = `, el("strong", {}, number(calibration.temperature, 3)),
    ` fitted on ${calibration.fitted_on || "an unnamed slice"}` +
    (calibration.n_fit ? ` (n = ${count(calibration.n_fit)})` : "") +
    `. ECE on the test split: ${ece(calibration.ece_before)} before, `, el("strong", {}, ece(calibration.ece_after)),
    " after.");
  const bins = Array.isArray(calibration.reliability) ? calibration.reliability : [];
  chart.replaceChildren(reliabilityChart(bins, live), liveLegend(labelled.n));
  const rows = Array.isArray(calibration.coverage) ? calibration.coverage : [];
  table.replaceChildren(...(rows.length ? [
    el("thead", {}, el("tr", {}, el("th", { class: "num" }, "abstain below"),
      el("th", { class: "num" }, "coverage"), el("th", { class: "num" }, "accuracy"))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { class: "num" }, number(r.abstain_below, 2)),
      el("td", { class: "num" }, pct(r.coverage)), el("td", { class: "num" }, pct(r.accuracy)))))] : []));
}

function liveLegend(n) {
  return el("p", { class: "legend" }, el("span", { class: "swatch served" }), "card (test split)",
    el("span", { class: "swatch live" }), `live (${plural(n, "labelled prediction")})`);
}

function showReport(report, jpeg) {
  $("monitor-title").textContent = `${report.model} v${report.version}: ` +
    `${plural(report.predictions, "prediction")} in the last ${windowText(report.window_s)}`;
  showDrift(report);
  showAccuracy(report.labelled, jpeg);
  const classes = report.predicted_classes, probability = report.top1_probability;
  $("monitor-classes").replaceChildren(
    pairedBars(report.class_names, classes.counts, classes.reference, "predicted classes"),
    legend(report.predictions, classes.reference));
  const edges = probability.counts.map((_, i) => `${(i / probability.bins).toFixed(1)}-` +
    `${((i + 1) / probability.bins).toFixed(1)}`);
  $("monitor-histogram").replaceChildren(
    pairedBars(edges, probability.counts, probability.reference, "top-1 probability histogram"),
    legend(report.predictions, probability.reference));
  showCalibration(report.calibration, report.labelled);
}

async function loadMonitor() {
  const model = $("model").value;
  if (!model) return;
  const asked = ++monitorAsked;
  const seconds = $("monitor-window").value;
  const query = seconds ? `?window_s=${seconds}` : "";
  $("monitor-title").textContent = `reading the prediction log of ${model}...`;
  try {
    const report = await api(`/v1/models/${encodeURIComponent(model)}/monitor` + query);
    const jpeg = await jpegAccuracy(model, report.version);
    if (asked !== monitorAsked) return;
    $("monitor-error").hidden = true;
    showReport(report, jpeg);
    $("monitor-body").hidden = false;
  } catch (error) {
    if (asked !== monitorAsked) return;
    $("monitor-title").textContent = "";
    $("monitor-body").hidden = true;
    $("monitor-error").textContent = `No monitor for ${model}: ${error.message}`;
    $("monitor-error").hidden = false;
  }
}

const monitorOpen = () => !$("panel-monitor").hidden;

document.addEventListener("DOMContentLoaded", () => {
  $("tab-monitor").addEventListener("click", loadMonitor);
  $("monitor-refresh").addEventListener("click", loadMonitor);
  $("monitor-window").addEventListener("change", loadMonitor);
  $("model").addEventListener("change", () => { if (monitorOpen()) loadMonitor(); });
});

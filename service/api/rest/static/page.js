// The explorer page: plain JavaScript over the service's public endpoints, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SPATIAL = new Set(["conv2d", "max_pool", "avg_pool"]);
const state = { model: null, table: null, file: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const body = type.includes("json") ? await response.json() : { error: await response.text() };
    const error = new Error(body.error || response.statusText);
    error.status = response.status;
    throw error;
  }
  return type.includes("json") ? response.json() : response.blob();
}

function status(text) { $("status").textContent = text; }
const shape = (dims) => "(" + dims.map((d) => (d === null ? "None" : d)).join(", ") + ")";
const count = (n) => n.toLocaleString("en-US");

function fillTable(table, rows) {
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, "Layer (type)"), el("th", {}, "Output shape"),
      el("th", { class: "num" }, "Param #"), el("th", {}, "Note"))),
    el("tbody", {}, ...rows.map((r) => el("tr", {},
      el("td", {}, `${r.name} (${r.type})`), el("td", {}, shape(r.output_shape)),
      el("td", { class: "num" }, count(r.params)), el("td", { class: "muted" }, r.note || "")))),
  );
}

// -- tabs ------------------------------------------------------------------------------------

function selectTab(id) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.id === id;
    tab.setAttribute("aria-selected", String(on));
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
}

// -- models, layer table ---------------------------------------------------------------------

async function loadModels() {
  const { models } = await api("/v1/models");
  // Tensor models are listed, marked and not selectable: this page classifies images.
  const served = models.filter((m) => m.state === "READY");
  const ready = served.filter((m) => m.kind !== "tensor").map((m) => m.name);
  $("model").replaceChildren(...served.map((m) => m.kind === "tensor"
    ? el("option", { value: m.name, disabled: "" }, `${m.name} (tensor model: v2 infer, :predict)`)
    : el("option", { value: m.name }, m.name)));
  if (!ready.length) { status("no model is ready"); return; }
  $("model").value = ready.includes("cifar10_cnn") ? "cifar10_cnn" : ready[0];
  await selectModel();
}

async function selectModel() {
  state.model = $("model").value;
  try {
    state.table = await api(`/v1/models/${encodeURIComponent(state.model)}/layers`);
    $("layer-title").textContent = `${state.model} v${state.table.model_version}: ` +
      `${count(state.table.total_params)} parameters`;
    fillTable($("layer-table"), state.table.layers);
    $("layer-notes").textContent = state.table.notes.join(" ");
  } catch (error) {
    state.table = null;
    $("layer-table").replaceChildren();
    $("layer-notes").textContent = `No layer table: ${error.message}`;
  }
  if (state.file) await analyse(state.file);
}

// -- classify and feature maps ---------------------------------------------------------------

function imageForm() {
  const form = new FormData();
  form.append("file", state.file, state.file.name || "image");
  return form;
}

async function analyse(file) {
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const model = encodeURIComponent(state.model);
  status("classifying...");
  try {
    const result = await api(`/v1/models/${model}:classify?top_k=5`, {
      method: "POST", body: imageForm(),
    });
    $("predictions").replaceChildren(...result.predictions[0].map((p) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.round(150 * p.probability)}px`;  // CSSOM: allowed by the CSP
      return el("li", {}, `${p.name} `, el("strong", {}, `${(100 * p.probability).toFixed(1)}%`), bar);
    }));
  } catch (error) {
    $("predictions").replaceChildren(el("li", { class: "error" }, error.message));
    status("");
    return;
  }
  await featureMaps();
  status("");
}

async function featureMaps() {
  const box = $("feature-maps");
  const layers = (state.table ? state.table.layers : []).filter((r) => SPATIAL.has(r.type));
  if (!layers.length) {
    box.replaceChildren(el("p", { class: "muted" }, "This model has no convolution or pooling layers to show."));
    return;
  }
  box.replaceChildren();
  for (const layer of layers) {
    status(`feature maps of ${layer.name}...`);
    const figure = el("figure", { "data-layer": layer.name });
    box.append(figure);
    try {
      const url = `/v1/models/${encodeURIComponent(state.model)}/activations` +
        `?layer=${encodeURIComponent(layer.name)}&format=png`;
      const png = await api(url, { method: "POST", body: imageForm() });
      const img = el("img", { alt: `feature maps of ${layer.name}` });
      img.src = URL.createObjectURL(png);
      figure.append(img, el("figcaption", {},
        `${layer.name} (${layer.type}) ${shape(layer.output_shape)}: one tile per channel`));
    } catch (error) {
      figure.append(el("p", { class: "error" }, `${layer.name}: ${error.message}`));
    }
  }
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files[0]) analyse($("file").files[0]); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) analyse(file);
  });
}

// -- shape calculator ------------------------------------------------------------------------

function showLayers(layers, input) {
  $("layers").value = "[\n" + layers.map((l) => "  " + JSON.stringify(l)).join(",\n") + "\n]";
  if (input) [$("in-h").value, $("in-w").value, $("in-c").value] = input;
  calculate();
}

let pending = null;
function scheduleCalculate() { clearTimeout(pending); pending = setTimeout(calculate, 300); }

async function calculate() {
  const error = $("calc-error");
  let layers;
  try {
    layers = JSON.parse($("layers").value);
  } catch (e) {
    error.textContent = `The layer list is not valid JSON: ${e.message}`;
    error.hidden = false;
    return;
  }
  const input = [$("in-h"), $("in-w"), $("in-c")].map((i) => Number(i.value));
  const strict = $("strict").checked;
  try {
    const table = await api(`/v1/shapes?strict=${strict}`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input_shape: input, layers }),
    });
    error.hidden = true;
    fillTable($("calc-table"), table.layers);
    $("calc-total").textContent = count(table.total_params);
    $("calc-trainable").textContent = count(table.trainable_params);
    $("calc-non-trainable").textContent = count(table.non_trainable_params);
    $("calc-notes").textContent = table.notes.join(" ");
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
    $("calc-table").replaceChildren();
    for (const id of ["calc-total", "calc-trainable", "calc-non-trainable"]) $(id).textContent = "-";
    $("calc-notes").textContent = "";
  }
}

async function loadServedArchitecture() {
  try {
    const { card } = await api(`/v1/models/${encodeURIComponent(state.model)}`);
    const arch = card.architecture || {};
    if (!arch.layers) throw new Error("the model card lists no architecture");
    showLayers(arch.layers, arch.input_shape);
  } catch (e) {
    $("calc-error").textContent = e.message;
    $("calc-error").hidden = false;
  }
}

function setUpCalculator() {
  const lecture = JSON.parse($("lecture-layers").textContent);
  $("load-lecture").addEventListener("click", () => showLayers(lecture, [32, 32, 3]));
  $("load-served").addEventListener("click", loadServedArchitecture);
  $("load-alexnet").addEventListener("click", () => showLayers(
    [{ type: "conv2d", filters: 96, kernel: 11, stride: 4, padding: 0 }], [227, 227, 3]));
  for (const id of ["layers", "in-h", "in-w", "in-c"]) $(id).addEventListener("input", scheduleCalculate);
  $("strict").addEventListener("change", calculate);
  showLayers(lecture, [32, 32, 3]);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab.id));
  }
  $("model").addEventListener("change", selectModel);
  setUpDrop();
  setUpCalculator();
  loadModels().catch((error) => status(`cannot list models: ${error.message}`));
});

// New job page: the schema-generated form and the raw config.json, kept in sync both ways.
"use strict";

const ALWAYS_WRITTEN = ["model_family", "model_flavour", "model_type"];
const families = Object.fromEntries((pageData.families || []).map((f) => [f.name, f]));
const form = document.getElementById("config-form");
const jsonBox = document.getElementById("config-json");
const jsonError = document.getElementById("json-error");
const datasetBox = document.getElementById("dataset-json");
const familySelect = document.getElementById("family");
const flavourSelect = document.getElementById("flavour");
const exampleSelect = document.getElementById("example");
const statusLine = document.getElementById("check-status");
const generalErrors = document.getElementById("general-errors");

// The keys the user set; everything else is at its schema default.
let config = {};

const fieldNodes = Object.fromEntries([...form.querySelectorAll(".field")].map((node) => [node.dataset.field, node]));
const defaults = Object.fromEntries(Object.entries(fieldNodes).map(([name, node]) => [name, JSON.parse(node.dataset.default)]));
defaults.model_family = Object.keys(families)[0] || null;
defaults.model_flavour = null;

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function widgetValue(name) {
  // The field's value as JSON, or throws an Error with a message for the field.
  const node = fieldNodes[name];
  const kind = node.dataset.widget;
  const nullable = node.dataset.nullable === "true";
  if (kind === "bool") return node.querySelector("input").checked;
  if (kind === "multi") return [...node.querySelectorAll("input:checked")].map((box) => box.value);
  const raw = node.querySelector("input, select, textarea").value;
  if (raw.trim() === "") {
    if (nullable) return null;
    if (kind === "text" || kind === "select") return raw;
    throw new Error("a value is required");
  }
  if (kind === "int" || kind === "float") {
    const number = Number(raw);
    if (!Number.isFinite(number)) throw new Error(`${raw} is not a number`);
    return number;
  }
  if (kind === "json") {
    try { return JSON.parse(raw); } catch (error) { throw new Error("not valid JSON: " + error.message); }
  }
  return raw;
}

function setWidget(name, value) {
  const node = fieldNodes[name];
  const kind = node.dataset.widget;
  if (kind === "bool") { node.querySelector("input").checked = Boolean(value); return; }
  if (kind === "multi") {
    const chosen = new Set(Array.isArray(value) ? value : []);
    node.querySelectorAll("input").forEach((box) => { box.checked = chosen.has(box.value); });
    return;
  }
  const input = node.querySelector("input, select, textarea");
  if (name === "output_dir") { input.value = "(job folder)/output"; return; }
  if (value === null || value === undefined) input.value = "";
  else if (kind === "json") input.value = JSON.stringify(value);
  else input.value = String(value);
}

function fillFlavours() {
  const info = families[familySelect.value];
  const flavours = info ? info.flavours : [];
  flavourSelect.replaceChildren(...flavours.map((f) => el("option", { value: f.name }, f.name + (info && f.name === info.default_flavour ? " (default)" : ""))));
  const help = document.getElementById("family-help");
  help.textContent = info ? info.description : "";
}

function renderForm() {
  if (config.model_family && families[config.model_family]) familySelect.value = config.model_family;
  fillFlavours();
  const info = families[familySelect.value];
  const flavour = config.model_flavour || (info && info.default_flavour);
  if (flavour) flavourSelect.value = flavour;
  for (const name of Object.keys(fieldNodes)) {
    setWidget(name, name in config ? config[name] : defaults[name]);
    fieldNodes[name].classList.toggle("changed", name in config && !same(config[name], defaults[name]));
  }
  markGroups();
}

function markGroups() {
  // Each group says how many of its keys differ from the default; groups with changes open.
  form.querySelectorAll("details.group").forEach((group) => {
    const changed = group.querySelectorAll(".field.changed").length;
    group.querySelector(".group-note").textContent = changed ? `${changed} changed` : "";
    if (changed) group.open = true;
  });
}

function revealProblems() {
  form.querySelectorAll("details.group").forEach((group) => {
    if (group.querySelector(".field.invalid, .warn-line")) group.open = true;
  });
  const first = document.querySelector(".field.invalid");
  if (first) first.scrollIntoView({ block: "center", behavior: "smooth" });
}

function renderJson() {
  jsonBox.value = JSON.stringify(config, null, 2);
  jsonError.textContent = "";
}

function takeModelPick() {
  config.model_family = familySelect.value;
  config.model_flavour = flavourSelect.value;
}

form.addEventListener("input", (event) => {
  const node = event.target.closest(".field");
  if (!node) return;
  const name = node.dataset.field;
  const slot = node.querySelector(".field-error");
  try {
    const value = widgetValue(name);
    slot.replaceChildren();
    node.classList.remove("invalid");
    if (same(value, defaults[name]) && !ALWAYS_WRITTEN.includes(name)) delete config[name];
    else config[name] = value;
    node.classList.toggle("changed", name in config && !same(config[name], defaults[name]));
    markGroups();
    renderJson();
  } catch (error) {
    slot.replaceChildren(el("span", { class: "error-line" }, error.message));
    node.classList.add("invalid");
  }
});

jsonBox.addEventListener("input", () => {
  let parsed;
  try {
    parsed = JSON.parse(jsonBox.value || "{}");
  } catch (error) {
    jsonError.textContent = "not valid JSON: " + error.message;
    return;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    jsonError.textContent = "config.json must be one JSON object {...}";
    return;
  }
  jsonError.textContent = "";
  config = parsed;
  renderForm();
});

familySelect.addEventListener("change", () => {
  config.model_family = familySelect.value;
  fillFlavours();
  config.model_flavour = flavourSelect.value;
  renderJson();
});
flavourSelect.addEventListener("change", () => { takeModelPick(); renderJson(); });

exampleSelect.addEventListener("change", async () => {
  if (!exampleSelect.value) return;
  const result = await api(`/api/examples/${encodeURIComponent(exampleSelect.value)}`);
  if (!result.ok) { statusLine.textContent = (result.data && result.data.detail) || "could not load the example"; return; }
  config = result.data.config;
  datasetBox.value = "";
  renderForm();
  takeModelPick();
  renderJson();
  statusLine.textContent = `loaded example '${exampleSelect.value}'`;
});

function requestBody(start) {
  takeModelPick();
  return {
    name: document.getElementById("job-name").value,
    config,
    dataset_config: datasetBox.value.trim() ? datasetBox.value : null,
    ...(start === undefined ? {} : { start }),
  };
}

function showResult(data) {
  showProblems(data.errors, data.warnings, generalErrors);
  revealProblems();
  const n = (data.errors || []).length, w = (data.warnings || []).length;
  statusLine.textContent = n ? `${n} problem${n > 1 ? "s" : ""} to fix` : `config OK${w ? ` (${w} warning${w > 1 ? "s" : ""})` : ""}`;
  statusLine.className = n ? "field-error" : "muted";
}

function detailMessage(data) {
  if (!data) return "request failed";
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return "request failed";
}

document.getElementById("check").addEventListener("click", async () => {
  statusLine.textContent = "checking…";
  const body = requestBody();
  delete body.name;
  const result = await api("/api/config/check", { method: "POST", body });
  if (result.data && "ok" in result.data) showResult(result.data);
  else statusLine.textContent = detailMessage(result.data);
});

async function save(start) {
  statusLine.textContent = start ? "saving and starting…" : "saving…";
  const result = await api("/api/jobs", { method: "POST", body: requestBody(start) });
  if (result.status === 201) {
    window.location.href = `/jobs/${encodeURIComponent(result.data.job.id)}`;
  } else if (result.data && "ok" in result.data) {
    showResult(result.data);
  } else {
    statusLine.textContent = detailMessage(result.data);
  }
}
document.getElementById("save").addEventListener("click", () => save(false));
document.getElementById("start").addEventListener("click", () => save(true));

// "Caption missing": a frametuner caption job on this config's datasets (server/captions.py).
document.getElementById("caption").addEventListener("click", async () => {
  statusLine.textContent = "creating the caption job…";
  const value = (id) => document.getElementById(id).value.trim();
  const body = Object.assign(requestBody(true), {
    model: value("caption-model") || null,
    batch_size: Number(value("caption-batch")) || 1,
    quantize: value("caption-quantize") || "none",
    prefix: value("caption-prefix"),
    overwrite: document.getElementById("caption-overwrite").checked,
  });
  const result = await api("/api/captions", { method: "POST", body });
  if (result.status === 201) window.location.href = `/jobs/${encodeURIComponent(result.data.job.id)}`;
  else if (result.data && "ok" in result.data) showResult(result.data);
  else statusLine.textContent = detailMessage(result.data);
});

async function init() {
  const initial = pageData.initial || {};
  config = Object.assign({}, initial.config || {});
  if (initial.dataset_config) datasetBox.value = initial.dataset_config;
  renderForm();
  takeModelPick();
  renderJson();
  const examples = await api("/api/examples");
  if (examples.ok) {
    exampleSelect.append(...examples.data.map((e) => el("option", { value: e.name }, e.name)));
    if (pageData.example) {
      exampleSelect.value = pageData.example;
      exampleSelect.dispatchEvent(new Event("change"));
    }
  }
}
init();

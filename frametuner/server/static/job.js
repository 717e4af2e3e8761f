// Job page: live view fed by the server-sent event stream (trainer events, log text, status).
"use strict";

let job = pageData.job;
const isTrain = job.kind === "train";
const chart = isTrain ? new LossChart(document.getElementById("loss-chart"), document.getElementById("chart-tip")) : null;
const logBox = document.getElementById("log");
const run = { maxSteps: null, validations: new Map(), checkpoints: [], finalLora: null };
let source = null;
let cursor = null;
let logLines = [];

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ status and actions
const ACTION_LABELS = {
  start: ["Start", "primary"],
  stop: ["Stop (save checkpoint)", ""],
  cancel: ["Cancel (kill)", "danger"],
  resume: ["Resume from latest checkpoint", "primary"],
};

const isLive = () => job.status === "running" || job.status === "stopping";

function renderStatus(data) {
  job = Object.assign(job, data);
  const badge = $("status");
  badge.textContent = job.status;
  badge.className = `badge status-${job.status}`;
  $("message").textContent = job.message ? `· ${job.message}` : "";
  $("gpus").textContent = job.on_cpu ? "CPU" : job.gpus && job.gpus.length ? `GPU ${job.gpus.join(",")}` : "";
  if (isTrain) {
    if (!isLive()) $("stat-eta").textContent = "–"; // a stopped or failed run's last estimate means nothing
    if (job.on_cpu) {
      $("stat-mem-label").textContent = "Device";
      $("stat-mem").textContent = "CPU";
    }
  }
  const buttons = (job.actions || []).map((name) => {
    const [label, style] = ACTION_LABELS[name] || [name, ""];
    return el("button", { type: "button", class: style, "data-action": name, onclick: () => act(name) }, label);
  });
  if (isTrain) buttons.push(el("a", { class: "button", href: `/jobs/new?source=${encodeURIComponent(job.id)}` }, "New job from this config"));
  $("actions").replaceChildren(...buttons);
}

async function act(name) {
  if (name === "cancel" && !window.confirm("Kill the job now? Progress since the last checkpoint is lost.")) return;
  document.querySelectorAll("#actions button").forEach((b) => { b.disabled = true; });
  const result = await api(`/api/jobs/${encodeURIComponent(job.id)}/${name}`, { method: "POST" });
  if (result.ok) renderStatus(result.data);
  else window.alert((result.data && result.data.detail) || `${name} failed`);
  renderStatus({});
  if (!source) follow();
}

// ------------------------------------------------------------------ training view
function renderStats(step) {
  $("stat-step").textContent = step.step === undefined ? "–" : `${step.step}${run.maxSteps ? " / " + run.maxSteps : ""}`;
  $("stat-loss").textContent = fmt.num(step.loss_smoothed);
  $("stat-lr").textContent = fmt.lr(step.lr);
  $("stat-speed").textContent = step.s_per_step === undefined ? "–" : fmt.num(step.s_per_step, 3);
  $("stat-eta").textContent = isLive() ? fmt.duration(step.eta_s) : "–";
  if (!job.on_cpu) $("stat-mem").textContent = step.peak_gb === undefined || step.peak_gb === null ? "–" : `${fmt.num(step.peak_gb, 3)} GB`;
  if (run.maxSteps && step.step !== undefined) $("progress-bar").style.width = `${Math.min(100, (100 * step.step) / run.maxSteps)}%`;
}

function outputPath(path) {
  // Event paths are relative to output_dir, which is <job>/output.
  return path ? `output/${path}` : null;
}

// What a validation shows besides a prompt's video (frametuner/sampling/gallery.py KINDS).
const KIND_LABELS = { continuation: "continuation: ", long: "long video: " };

function renderValidations() {
  const box = $("validations");
  if (!run.validations.size) return;
  const steps = [...run.validations.keys()].sort((a, b) => b - a);
  box.replaceChildren(el("div", { class: "val-steps" }, ...steps.map((step) => el("div", { class: "val-step" },
    el("h3", {}, `step ${step}`),
    el("div", { class: "val-items" }, ...run.validations.get(step).map((v) => el("figure", {},
      v.video ? el("video", { src: fileUrl(job.id, outputPath(v.video)), controls: true, loop: true, muted: true, preload: "auto", playsinline: true }) : null,
      el("figcaption", {}, (KIND_LABELS[v.kind] || "") + (v.prompt || `prompt ${v.prompt_index}`)),
      v.contact_sheet ? el("a", { href: fileUrl(job.id, outputPath(v.contact_sheet)), target: "_blank" },
        el("img", { class: "sheet", src: fileUrl(job.id, outputPath(v.contact_sheet)), alt: `contact sheet, step ${step}` })) : null,
      // Long videos: one contact sheet per segment, so drift from segment to segment shows at a glance.
      ...(v.segment_sheets || []).map((sheet, n) => el("a", { href: fileUrl(job.id, outputPath(sheet)), target: "_blank", title: `segment ${n}` },
        el("img", { class: "sheet segment", src: fileUrl(job.id, outputPath(sheet)), alt: `segment ${n} contact sheet, step ${step}` }))),
    ))),
  ))));
}

function loraLinks(lora) {
  return el("span", { class: "lora-links" }, ...Object.entries(lora || {}).map(([format, path]) =>
    el("a", { href: fileUrl(job.id, outputPath(path), true), download: "" }, format)));
}

function renderCheckpoints() {
  const rows = run.checkpoints.map((c) => el("tr", {},
    el("td", {}, String(c.step)), el("td", { class: "mono small" }, c.path || ""), el("td", {}, loraLinks(c.lora))));
  if (run.finalLora) rows.push(el("tr", {}, el("td", {}, "final"), el("td", { class: "muted small" }, "end of training"), el("td", {}, loraLinks(run.finalLora))));
  if (rows.length) $("checkpoints").replaceChildren(...rows);
}

function supersede(step) {
  // events.jsonl keeps a killed launch's steps past the checkpoint a later launch resumed: drop them.
  if (!Number.isInteger(step)) return;
  chart.truncate(step);
  for (const key of [...run.validations.keys()]) if (key > step) run.validations.delete(key);
  renderValidations();
}

function onTrainerEvent(event) {
  switch (event.event) {
    case "start":
      run.maxSteps = event.max_steps;
      supersede(event.step);
      break;
    case "resume":
      supersede(event.step);
      break;
    case "step":
      chart.add({ step: event.step, loss: event.loss, smoothed: event.loss_smoothed });
      renderStats(event);
      break;
    case "validation": {
      const list = run.validations.get(event.step) || [];
      const kind = (v) => v.kind || "prompt";
      run.validations.set(event.step, list.filter((v) => v.prompt_index !== event.prompt_index || kind(v) !== kind(event)).concat([event]));
      renderValidations();
      break;
    }
    case "checkpoint":
      run.checkpoints = run.checkpoints.filter((c) => c.step !== event.step).concat([event]);
      renderCheckpoints();
      break;
    case "done":
      run.finalLora = event.lora;
      renderCheckpoints();
      break;
    case "error":
      $("message").textContent = `· ${event.message}`;
      break;
  }
}

// ------------------------------------------------------------------ sample view
async function renderSampleOutput() {
  if (job.kind === "caption") return renderCaptions();
  const result = await api(`/api/jobs/${encodeURIComponent(job.id)}`);
  if (!result.ok) return;
  const outputs = result.data.outputs || {};
  const p = result.data.params || {};
  $("sample-params").textContent = `${p.prompt || ""} · ${p.resolution} · ${p.num_frames} frames · ${p.steps} steps · guidance ${p.guidance} · seed ${p.seed}`;
  if (!outputs.video) return;
  $("sample-output").replaceChildren(el("figure", {},
    el("video", { src: fileUrl(job.id, outputs.video), controls: true, loop: true, autoplay: true, muted: true, playsinline: true }),
    el("figcaption", {}, el("a", { href: fileUrl(job.id, outputs.video, true) }, "download mp4")),
    outputs.contact_sheet ? el("img", { class: "sheet", src: fileUrl(job.id, outputs.contact_sheet), alt: "contact sheet" }) : null,
  ));
}

// ------------------------------------------------------------------ caption view
async function renderCaptions() {
  const base = "output/caption_review/";
  const result = await api(fileUrl(job.id, base + "index.json"));
  if (!result.ok || !result.data) return;
  const review = result.data;
  const rows = (review.rows || []).map((row) => el("div", { class: "caption-row" },
    row.sheet ? el("img", { class: "sheet", src: fileUrl(job.id, base + row.sheet), alt: "contact sheet" }) : el("p", { class: "muted" }, "no frames"),
    el("div", {},
      el("div", { class: "mono small muted" }, `${row.path} · ${row.status}`),
      el("p", { class: row.status === "failed" ? "field-error" : "" }, row.caption || row.reason || ""))));
  $("caption-output").replaceChildren(
    el("p", {}, `${review.captioned} captioned now, ${review.skipped} had a caption, ${review.failed} failed.`), ...rows);
}

// ------------------------------------------------------------------ log
function appendLog(text) {
  const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 30;
  const parts = text.split("\n");
  if (logLines.length) logLines[logLines.length - 1] += parts.shift();
  logLines.push(...parts);
  // A progress bar redraws its line with "\r": keep what it drew last.
  logLines = logLines.slice(-2000).map((line) => (line.includes("\r") ? line.slice(line.lastIndexOf("\r", line.length - 2) + 1) : line));
  logBox.textContent = logLines.join("\n");
  if (atBottom) logBox.scrollTop = logBox.scrollHeight;
}

// ------------------------------------------------------------------ the stream
function follow() {
  const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
  source = new EventSource(`/api/jobs/${encodeURIComponent(job.id)}/events${query}`);
  source.addEventListener("trainer", (e) => { if (isTrain) onTrainerEvent(JSON.parse(e.data)); });
  source.addEventListener("log", (e) => appendLog(JSON.parse(e.data).text));
  source.addEventListener("status", (e) => {
    renderStatus(JSON.parse(e.data));
    if (!isTrain) renderSampleOutput();
  });
  source.addEventListener("cursor", (e) => { cursor = e.lastEventId; });
  source.addEventListener("end", () => {
    source.close();
    source = null;
    if (!isTrain) renderSampleOutput();
  });
}

async function showConfig() {
  const result = await api(`/api/jobs/${encodeURIComponent(job.id)}/config`);
  if (!result.ok) return;
  let text = JSON.stringify(result.data.config, null, 2);
  if (result.data.dataset_config) text += "\n\n// datasets.json\n" + result.data.dataset_config;
  $("config-view").textContent = text;
}

renderStatus({});
if (isTrain) chart.draw(); else renderSampleOutput();
showConfig();
follow();

// Preview page: a `frametuner sample` job from a base model or a trained LoRA.
"use strict";

const families = pageData.families || [];
const familySelect = document.getElementById("family");
const flavourSelect = document.getElementById("flavour");
const baseJob = document.getElementById("base-job");
const loraSelect = document.getElementById("lora");
const statusLine = document.getElementById("sample-status");
let loras = [];
let videos = [];

function fillFlavours() {
  const info = families.find((f) => f.name === familySelect.value);
  flavourSelect.replaceChildren(...(info ? info.flavours : []).map((f) => el("option", { value: f.name }, f.name)));
  if (info) flavourSelect.value = info.suggested_flavour || info.default_flavour; // no GPU: a flavour the CPU can run
  if (info && info.defaults) { // the family's sampling defaults
    document.getElementById("resolution").value = info.defaults.resolution;
    document.getElementById("num-frames").value = info.defaults.frames;
    document.getElementById("steps").value = info.defaults.steps;
    document.getElementById("guidance").value = info.defaults.guidance;
  }
}

function fillLoras() {
  const chosen = baseJob.value;
  const usable = loras.filter((l) => !chosen || l.job_id === chosen);
  loraSelect.replaceChildren(el("option", { value: "" }, "(none)"),
    ...usable.map((l, i) => el("option", { value: String(loras.indexOf(l)) }, `${l.job_name}: ${l.label} (${l.format})`)));
  const modelFromJob = Boolean(chosen);
  document.getElementById("family-label").hidden = modelFromJob;
  document.getElementById("flavour-label").hidden = modelFromJob;
}

function fillVideos() {
  const select = document.getElementById("video-source");
  select.replaceChildren(el("option", { value: "" }, "(none)"),
    ...videos.map((v, i) => el("option", { value: String(i) }, `${v.job_name}: ${v.label}`)));
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

const numberOrNull = (id) => {
  const value = document.getElementById(id).value;
  return value === "" ? null : Number(value);
};

document.getElementById("sample-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("image").files[0];
  const lora = loraSelect.value === "" ? null : loras[Number(loraSelect.value)];
  const videoFile = document.getElementById("video").files[0];
  const picked = document.getElementById("video-source").value;
  const videoSource = picked === "" ? null : videos[Number(picked)];
  const body = {
    base_job_id: baseJob.value || null,
    model_family: baseJob.value ? null : familySelect.value,
    model_flavour: baseJob.value ? null : flavourSelect.value,
    prompt: document.getElementById("prompt").value,
    negative_prompt: document.getElementById("negative-prompt").value,
    image: file ? await readImage(file) : null,
    lora: lora ? { job_id: lora.job_id, path: lora.path, multiplier: numberOrNull("lora-multiplier") ?? 1.0 } : null,
    resolution: document.getElementById("resolution").value,
    num_frames: numberOrNull("num-frames"),
    steps: numberOrNull("steps"),
    guidance: numberOrNull("guidance"),
    seed: numberOrNull("seed"),
    fps: numberOrNull("fps"),
    video: videoFile ? await readImage(videoFile) : null,
    video_source: videoSource ? { job_id: videoSource.job_id, path: videoSource.path } : null,
    cond_frames: numberOrNull("cond-frames"),
    segments: numberOrNull("segments") ?? 0,
    no_kv_cache: !document.getElementById("kv-cache").checked,
    no_enhance_hf: !document.getElementById("enhance-hf").checked,
  };
  statusLine.textContent = "submitting…";
  const result = await api("/api/samples", { method: "POST", body });
  if (result.status === 201) {
    window.location.href = `/jobs/${encodeURIComponent(result.data.job.id)}`;
    return;
  }
  const detail = result.data && result.data.detail;
  if (Array.isArray(detail)) {
    // FastAPI body validation: [{loc: ["body", field], msg}]
    showProblems(detail.map((d) => ({ field: d.loc[d.loc.length - 1], message: d.msg })), [], document.getElementById("general-errors"));
    statusLine.textContent = "fix the marked fields";
  } else if (result.data && "errors" in result.data) {
    showProblems(result.data.errors, result.data.warnings, document.getElementById("general-errors"));
    statusLine.textContent = "the model settings have problems";
  } else {
    statusLine.textContent = detail || "request failed";
  }
});

async function showRecent() {
  const result = await api("/api/jobs");
  if (!result.ok) return;
  const samples = result.data.filter((j) => j.kind === "sample").slice(0, 12);
  if (!samples.length) return;
  const cards = await Promise.all(samples.map(async (j) => {
    const detail = j.status === "finished" ? await api(`/api/jobs/${encodeURIComponent(j.id)}`) : null;
    const video = detail && detail.ok && detail.data.outputs ? detail.data.outputs.video : null;
    return el("figure", {},
      video ? el("video", { src: fileUrl(j.id, video), controls: true, loop: true, muted: true, preload: "metadata" }) : null,
      el("figcaption", {}, el("a", { href: `/jobs/${encodeURIComponent(j.id)}` }, j.name), " ", statusBadge(j.status)));
  }));
  document.getElementById("recent").replaceChildren(...cards);
}

async function init() {
  familySelect.replaceChildren(...families.map((f) => el("option", { value: f.name }, f.name)));
  fillFlavours();
  familySelect.addEventListener("change", fillFlavours);
  baseJob.addEventListener("change", fillLoras);
  const result = await api("/api/loras");
  loras = result.ok ? result.data : [];
  fillLoras();
  const found = await api("/api/videos");
  videos = found.ok ? found.data : [];
  fillVideos();
  showRecent();
}
init();

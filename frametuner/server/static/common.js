// Helpers shared by the pages: API calls, element building, number formats. No framework.
"use strict";

const pageData = JSON.parse(document.getElementById("page-data").textContent || "{}");

// JSON API call: resolves to {ok, status, data}; never throws on HTTP errors.
async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: { Accept: "application/json" } };
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    return { ok: false, status: 0, data: { detail: "server unreachable: " + error } };
  }
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  return { ok: response.ok, status: response.status, data };
}

// el("a", {href: "/x", class: "y"}, "text", child...) -> element; text is always set as text.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fileUrl(jobId, path, download = false) {
  const encoded = String(path).split("/").map(encodeURIComponent).join("/");
  return `/api/jobs/${encodeURIComponent(jobId)}/files/${encoded}${download ? "?download=1" : ""}`;
}

const fmt = {
  num(value, digits = 4) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toPrecision(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  },
  lr(value) {
    return value === null || value === undefined ? "–" : Number(value).toExponential(2);
  },
  duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "–";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s).padStart(2, "0")}`;
  },
  time(unix) {
    return unix ? new Date(unix * 1000).toLocaleString() : "–";
  },
};

function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

// Show per-field messages in their [data-error-for=FIELD] slots; the rest go into a general list.
function showProblems(errors, warnings, generalList) {
  document.querySelectorAll("[data-error-for]").forEach((node) => node.replaceChildren());
  document.querySelectorAll(".field.invalid").forEach((node) => node.classList.remove("invalid"));
  if (generalList) generalList.replaceChildren();
  const place = (problem, warn) => {
    const target = problem.field && document.querySelector(`[data-error-for="${CSS.escape(problem.field)}"]`);
    if (target) {
      if (target.childNodes.length) target.append(" · ");
      target.append(el("span", { class: warn ? "warn-line" : "error-line" }, problem.message));
      const field = target.closest(".field");
      if (field && !warn) field.classList.add("invalid");
    } else if (generalList) {
      generalList.append(el("li", { class: warn ? "warn" : "" }, (problem.field ? problem.field + ": " : "") + problem.message));
    }
  };
  (errors || []).forEach((p) => place(p, false));
  (warnings || []).forEach((p) => place(p, true));
}

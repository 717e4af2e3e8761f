// Jobs list: refreshed from GET /api/jobs every two seconds.
"use strict";

function jobRow(job) {
  const p = job.progress || {};
  const progress = p.step !== null && p.step !== undefined ? `${p.step}${p.max_steps ? " / " + p.max_steps : ""}` : "";
  return el("tr", {},
    el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, job.name), el("div", { class: "muted small mono" }, job.id)),
    el("td", {}, job.kind),
    el("td", {}, statusBadge(job.status), job.message ? el("div", { class: "small message" }, job.message) : null),
    el("td", {}, progress),
    el("td", {}, p.loss_smoothed !== undefined && p.loss_smoothed !== null ? fmt.num(p.loss_smoothed) : ""),
    el("td", {}, job.status === "running" && p.eta_s !== undefined && p.eta_s !== null ? fmt.duration(p.eta_s) : ""),
    el("td", { class: "small" }, fmt.time(job.created_at)),
  );
}

function renderJobs(jobs) {
  const body = document.getElementById("jobs-body");
  if (!jobs.length) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 7 }, "No jobs yet. ", el("a", { href: "/jobs/new" }, "Create one"), ".")));
    return;
  }
  body.replaceChildren(...jobs.map(jobRow));
}

renderJobs(pageData.jobs || []);
setInterval(async () => {
  const result = await api("/api/jobs");
  if (result.ok) renderJobs(result.data);
}, 2000);

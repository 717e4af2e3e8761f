// A small canvas line chart for the loss: raw loss (faint) and smoothed loss, by step.
"use strict";

class LossChart {
  constructor(canvas, tip) {
    this.canvas = canvas;
    this.tip = tip;
    this.points = []; // {step, loss, smoothed}
    this.pending = false;
    window.addEventListener("resize", () => this.draw());
    canvas.addEventListener("mousemove", (event) => this.hover(event));
    canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
  }

  add(point) {
    // A resumed run repeats steps after its checkpoint: the newer value wins.
    while (this.points.length && this.points[this.points.length - 1].step >= point.step) this.points.pop();
    this.points.push(point);
    this.canvas.dataset.points = String(this.points.length);
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  truncate(step) {
    // A resumed launch redoes the steps past its checkpoint: the killed launch's go now.
    const before = this.points.length;
    while (this.points.length && this.points[this.points.length - 1].step > step) this.points.pop();
    this.canvas.dataset.points = String(this.points.length);
    if (this.points.length !== before) this.draw();
  }

  static niceTicks(min, max, count) {
    if (!(max > min)) { max = min + 1; }
    const raw = (max - min) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  layout() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth, height = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(width * ratio)) this.canvas.width = Math.round(width * ratio);
    if (this.canvas.height !== Math.round(height * ratio)) this.canvas.height = Math.round(height * ratio);
    const pad = { left: 56, right: 14, top: 10, bottom: 28 };
    return { ratio, width, height, pad, plotW: width - pad.left - pad.right, plotH: height - pad.top - pad.bottom };
  }

  scales(box) {
    const steps = this.points.map((p) => p.step);
    const values = this.points.flatMap((p) => [p.loss, p.smoothed]).filter((v) => Number.isFinite(v));
    let xMin = Math.min(...steps), xMax = Math.max(...steps);
    if (xMax === xMin) xMax = xMin + 1;
    let yMin = Math.min(...values), yMax = Math.max(...values);
    const margin = (yMax - yMin) * 0.06 || Math.abs(yMax) * 0.1 || 0.1;
    yMin -= margin; yMax += margin;
    return {
      xMin, xMax, yMin, yMax,
      x: (step) => box.pad.left + ((step - xMin) / (xMax - xMin)) * box.plotW,
      y: (value) => box.pad.top + (1 - (value - yMin) / (yMax - yMin)) * box.plotH,
    };
  }

  draw() {
    const box = this.layout();
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(box.ratio, 0, 0, box.ratio, 0, 0);
    ctx.clearRect(0, 0, box.width, box.height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    if (!this.points.length) {
      ctx.fillText("waiting for the first step…", box.pad.left, box.pad.top + 20);
      return;
    }
    const s = this.scales(box);
    ctx.strokeStyle = "#e4e7ec";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    for (const v of LossChart.niceTicks(s.yMin, s.yMax, 5)) {
      const y = Math.round(s.y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(box.pad.left, y); ctx.lineTo(box.width - box.pad.right, y); ctx.stroke();
      ctx.fillText(fmt.num(v, 3), box.pad.left - 6, y + 4);
    }
    ctx.textAlign = "center";
    for (const v of LossChart.niceTicks(s.xMin, s.xMax, 8)) {
      if (!Number.isInteger(v)) continue;
      ctx.fillText(String(v), s.x(v), box.height - 8);
    }
    const line = (key, color, width) => {
      ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
      let started = false;
      for (const p of this.points) {
        if (!Number.isFinite(p[key])) continue;
        const x = s.x(p.step), y = s.y(p[key]);
        if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
      }
      ctx.stroke();
    };
    line("loss", "#9ab8d6", 1);
    line("smoothed", "#1f4e79", 2);
    if (this.points.length < 60) {
      ctx.fillStyle = "#1f4e79";
      for (const p of this.points) {
        if (Number.isFinite(p.smoothed)) { ctx.beginPath(); ctx.arc(s.x(p.step), s.y(p.smoothed), 2.2, 0, 2 * Math.PI); ctx.fill(); }
      }
    }
  }

  hover(event) {
    if (!this.points.length) return;
    const box = this.layout();
    const s = this.scales(box);
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    let best = this.points[0];
    for (const p of this.points) if (Math.abs(s.x(p.step) - x) < Math.abs(s.x(best.step) - x)) best = p;
    this.tip.hidden = false;
    this.tip.textContent = `step ${best.step} · loss ${fmt.num(best.loss)} · smoothed ${fmt.num(best.smoothed)}`;
    this.tip.style.left = `${Math.min(s.x(best.step) + 8, box.width - 230)}px`;
    this.tip.style.top = `${Math.max(0, s.y(best.smoothed) - 28)}px`;
  }
}

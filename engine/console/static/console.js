// Parley console: a little vanilla JavaScript, no libraries.
//  - Parley.post(path, body): POST JSON with the page's CSRF token (X-CSRF-Token).
//  - Parley.poll(path, ms, draw): GET JSON every ms (2 s by default) while the tab is visible.
//  - Parley.spark(values, opts): an inline SVG sparkline (an SVG element).
//  - "show" buttons next to masked numbers unmask them (operator; audited).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function csrf() {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  async function post(path, body) {
    const resp = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body || {}),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const msg = (data.error && data.error.message) || resp.statusText;
      throw new Error(msg);
    }
    return data;
  }

  function poll(path, ms, draw) {
    let timer = null;
    let stopped = false;
    async function tick() {
      if (stopped) return;
      if (!document.hidden) {
        try {
          const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
          if (resp.status === 401) { window.location.assign("/console/login?next=" + encodeURIComponent(location.pathname)); return; }
          if (resp.ok) { draw(await resp.json()); document.body.classList.remove("stale"); }
          else document.body.classList.add("stale");
        } catch (e) {
          document.body.classList.add("stale");
        }
      }
      timer = setTimeout(tick, ms || 2000);
    }
    tick();
    return function stop() { stopped = true; if (timer) clearTimeout(timer); };
  }

  function spark(values, opts) {
    opts = opts || {};
    const w = opts.width || 240, h = opts.height || 48, pad = 2;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const series = Array.isArray(values[0]) ? values : [values];
    let max = opts.max || 0;
    series.forEach((s) => s.forEach((v) => { if (v != null && v > max) max = v; }));
    if (!max) max = 1;
    series.forEach((s, i) => {
      const n = s.length;
      if (n < 2) return;
      const pts = s.map((v, j) => {
        const x = pad + (j * (w - 2 * pad)) / (n - 1);
        const y = h - pad - ((v || 0) * (h - 2 * pad)) / max;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      if (opts.classes && opts.classes[i]) line.setAttribute("class", opts.classes[i]);
      svg.appendChild(line);
    });
    return svg;
  }

  function unmaskButtons(root) {
    root.querySelectorAll("button.unmask").forEach((btn) => {
      if (btn.dataset.bound) return;
      btn.dataset.bound = "1";
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const data = await post("/console/api/unmask", { ref: btn.dataset.ref });
          const span = btn.previousElementSibling;
          if (span && span.classList.contains("num")) span.textContent = data.number;
          btn.remove();
        } catch (e) {
          btn.disabled = false;
          btn.title = e.message;
        }
      });
    });
  }

  window.Parley = { post, poll, spark, unmaskButtons, csrf };
  document.addEventListener("DOMContentLoaded", () => unmaskButtons(document));
})();

// The Overview, live: polls /console/api/overview every 2 s and redraws (no innerHTML of data).
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }
  function text(id, value) { const el = $(id); if (el) el.textContent = value; }
  function ms(v) { return v == null ? "–" : (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " ms"; }
  function num(v) { return v == null ? "–" : String(v); }

  function cell(tr, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function rows(tableId, items, fill, empty, cols) {
    const body = document.querySelector("#" + tableId + " tbody");
    if (!body) return;
    body.replaceChildren();
    if (!items.length) {
      const tr = document.createElement("tr");
      cell(tr, empty).colSpan = cols;
      body.appendChild(tr);
      return;
    }
    items.forEach((item) => { const tr = document.createElement("tr"); fill(tr, item); body.appendChild(tr); });
  }

  function chart(id, series, classes) {
    const el = $(id);
    if (!el) return;
    el.replaceChildren(window.Parley.spark(series, { classes: classes }));
  }

  function draw(o) {
    text("ov-turns", o.turns.per_s == null ? "–" : o.turns.per_s.toFixed(1));
    text("ov-turns-total", num(o.turns.total));
    text("ov-p50", ms(o.turn_latency.p50_ms));
    text("ov-p99", ms(o.turn_latency.p99_ms));
    text("ov-wait-p50", ms(o.reply_wait.p50_ms));
    text("ov-wait-p99", ms(o.reply_wait.p99_ms));
    text("ov-inbound", num(o.inbound.depth));
    text("ov-pending", num(o.inbound.pending));
    text("ov-oldest", num(o.inbound.oldest_s));
    text("ov-out-reply", num(o.outbound.reply));
    text("ov-out-bulk", num(o.outbound.bulk));
    const updated = $("ov-updated");
    if (updated) { updated.dataset.at = o.at; updated.textContent = "Updated " + new Date(o.at).toLocaleTimeString() + "."; }
    chart("spark-turns", o.turns.series);
    chart("spark-latency", [o.turn_latency.series_p50, o.turn_latency.series_p99], ["p50", "p99"]);
    chart("spark-wait", [o.reply_wait.series_p50, o.reply_wait.series_p99], ["p50", "p99"]);
    const most = Math.max(1, ...o.gate.map((g) => g.total));
    rows("ov-gate", o.gate, (tr, g) => {
      cell(tr, g.decision); cell(tr, g.per_min, "n"); cell(tr, g.total, "n");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round((120 * g.total) / most) + "px";
      cell(tr, "").appendChild(bar);
    }, "No sends through the gate yet.", 4);
    rows("ov-gateways", o.gateways, (tr, g) => {
      tr.dataset.gateway = g.name;
      const a = document.createElement("a");
      a.href = "/console/gateways#gw-" + g.name;
      a.textContent = g.name;
      cell(tr, "").appendChild(a);
      cell(tr, g.type);
      cell(tr, num(g.rate_per_s) + (g.configured_rate ? " / " + g.configured_rate : ""), "n");
      cell(tr, g.backlog.reply + " / " + g.backlog.bulk, "n");
      cell(tr, g.circuit, "state-" + g.circuit.replace("-", "_"));
      cell(tr, g.binds ? g.binds.held + " of " + g.binds.of : "–");
      const s = Object.entries(g.senders).map(([who, shards]) => who + " (" + shards.length + ")");
      cell(tr, s.length ? s.join(", ") : "–");
    }, "No connectors configured.", 7);
    rows("ov-workers", o.workers, (tr, w) => { cell(tr, w.id); cell(tr, w.shards.join(", ")); },
      "No worker holds a shard.", 2);
    text("ov-unread", o.unread_shards.length ? "Shards no worker reads: " + o.unread_shards.join(", ") : "");
  }

  document.addEventListener("DOMContentLoaded", () => window.Parley.poll("/console/api/overview", 2000, draw));
})();

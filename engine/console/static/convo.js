// Conversations and Inbox pages: the live tail, and transcripts refreshed while open.
"use strict";
(function () {
  const KEEP = 60;

  // Like Parley.poll, but the address is asked for each time (the tail's ?since= moves on).
  function poll(address, ms, draw) {
    async function tick() {
      if (!document.hidden) {
        try {
          const resp = await fetch(address(), { credentials: "same-origin", headers: { Accept: "application/json" } });
          if (resp.status === 401) { window.location.assign("/console/login?next=" + encodeURIComponent(location.pathname)); return; }
          if (resp.ok) { draw(await resp.json()); document.body.classList.remove("stale"); }
          else document.body.classList.add("stale");
        } catch (e) {
          document.body.classList.add("stale");
        }
      }
      setTimeout(tick, ms);
    }
    tick();
  }

  function when(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function tail(table) {
    const body = table.tBodies[0];
    const empty = document.getElementById("tail-empty");
    const seen = new Set();
    let since = "";
    poll(() => table.dataset.src + (since ? "?since=" + since : ""), 2000, function draw(data) {
      const fresh = data.events.filter((e) => !seen.has(e.id));
      // newest first: insert the oldest new one first, each at the top
      fresh.reverse().forEach((e) => {
        seen.add(e.id);
        const tr = document.createElement("tr");
        tr.className = "fresh kind-" + e.kind;
        tr.dataset.id = e.id;
        cell(tr, when(e.at));
        const a = document.createElement("a");
        a.href = e.href;
        a.textContent = e.contact;
        a.className = "num";
        cell(tr, "").appendChild(a);
        cell(tr, e.flow || "–");
        cell(tr, e.summary, "summary");
        body.insertBefore(tr, body.firstChild);
      });
      while (body.rows.length > KEEP) {
        seen.delete(body.rows[body.rows.length - 1].dataset.id);
        body.deleteRow(body.rows.length - 1);
      }
      if (empty) empty.hidden = body.rows.length > 0;
      since = String(data.since || "");
    });
  }

  function transcript(table) {
    let last = "";
    poll(() => table.dataset.src, 2000, function draw(data) {
      if (data.html === last) return;
      last = data.html;
      // Rows rendered (and escaped) by the server from the page's own template.
      table.tBodies[0].innerHTML = data.html;
      window.Parley.unmaskButtons(table);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const t = document.getElementById("tail");
    if (t) tail(t);
    const tr = document.getElementById("transcript");
    if (tr && tr.dataset.src) transcript(tr);
  });
})();

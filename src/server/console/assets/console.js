// The outbox web console's only script: live updates of the overview (polls /api/overview
// every 2 s and writes texts with textContent, never HTML), and "select all" on lists.
"use strict";

function liveOverview(root) {
  const url = root.dataset.live;
  const put = (data) => {
    for (const el of document.querySelectorAll("[data-k]")) {
      const v = data.fields[el.dataset.k];
      if (v !== undefined && el.textContent !== v) el.textContent = v;
    }
    for (const el of document.querySelectorAll("[data-s]")) {
      const s = data.states[el.dataset.s];
      if (s !== undefined) el.dataset.state = s;
    }
    rows(document.getElementById("by-topic"), data.by_topic);
    rows(document.getElementById("slots"), data.slots);
    const slots = document.getElementById("slots-section");
    if (slots) slots.hidden = data.slots.length === 0;
    chart(document.querySelector("#rate-chart polyline"), data.rate);
    root.dataset.updated = String(Date.now());
  };
  const tick = async () => {
    try {
      const res = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (res.ok) {
        put(await res.json());
        root.classList.remove("stale");
      } else {
        root.classList.add("stale");
      }
    } catch (e) {
      root.classList.add("stale");
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

function rows(tbody, data) {
  if (!tbody) return;
  const fresh = document.createElement("tbody");
  fresh.id = tbody.id;
  for (const cells of data) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  tbody.replaceWith(fresh);
}

function chart(line, rate) {
  if (!line) return;
  const max = Math.max(1, ...rate.map((p) => p[1]));
  const n = Math.max(2, rate.length) - 1;
  line.setAttribute("points", rate
    .map((p, i) => `${(i * 300 / n).toFixed(1)},${(60 - p[1] / max * 58).toFixed(1)}`)
    .join(" "));
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.querySelector("[data-live]");
  if (root) liveOverview(root);
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[name="id"][type="checkbox"]')) {
        box.checked = all.checked;
      }
    });
  }
});

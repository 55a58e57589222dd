// gridnode console: live refresh of <main>, sortable and filterable tables. No network
// access but this node's own pages.
"use strict";

function sortable(table) {
  table.querySelectorAll("thead th").forEach((th, col) => {
    th.addEventListener("click", () => {
      const asc = !th.classList.contains("asc");
      table.querySelectorAll("thead th").forEach((h) => h.classList.remove("asc", "desc"));
      th.classList.add(asc ? "asc" : "desc");
      const body = table.tBodies[0];
      const key = (tr) => {
        const td = tr.children[col];
        if (!td) return "";
        const v = td.dataset.sort ?? td.textContent.trim();
        const n = Number(v);
        return v !== "" && !Number.isNaN(n) ? n : v.toLowerCase();
      };
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach((r) => body.appendChild(r));
      table.dataset.sorted = col + (asc ? "+" : "-");
    });
  });
}

function filterable(input) {
  const table = document.getElementById(input.dataset.filter);
  const apply = () => {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    Array.from(table.tBodies[0].rows).forEach((tr) => {
      const text = tr.textContent.toLowerCase();
      tr.hidden = !words.every((w) => text.includes(w));
    });
  };
  input.addEventListener("input", apply);
  apply();
}

function wire(root) {
  root.querySelectorAll("table.sortable").forEach(sortable);
  root.querySelectorAll("input[data-filter]").forEach(filterable);
}

function busy() {
  const a = document.activeElement;
  return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
}

async function refresh() {
  const live = document.getElementById("live");
  if (!live || !live.checked || busy() || document.hidden) return;
  const url = new URL(window.location.href);
  url.searchParams.delete("done");
  const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
  if (!r.ok) return;
  const doc = new DOMParser().parseFromString(await r.text(), "text/html");
  const fresh = doc.getElementById("main");
  const main = document.getElementById("main");
  if (!fresh || !main || busy()) return;
  const filters = Array.from(main.querySelectorAll("input[data-filter]")).map((i) => i.value);
  const sorted = Array.from(main.querySelectorAll("table.sortable")).map((t) => t.dataset.sorted);
  main.replaceChildren(...fresh.childNodes);
  wire(main);
  main.querySelectorAll("input[data-filter]").forEach((i, k) => {
    if (filters[k]) { i.value = filters[k]; i.dispatchEvent(new Event("input")); }
  });
  main.querySelectorAll("table.sortable").forEach((t, k) => {
    const s = sorted[k];
    if (!s) return;
    const th = t.querySelectorAll("thead th")[parseInt(s, 10)];
    if (th) { th.click(); if (s.endsWith("-")) th.click(); }
  });
  document.body.dataset.refreshed = String(Date.now());
}

document.addEventListener("DOMContentLoaded", () => {
  wire(document);
  setInterval(() => { refresh().catch(() => {}); }, 5000);
});

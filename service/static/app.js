// npid-search page: pick or drop an image, POST /search, show the neighbours; click one to search by it.
"use strict";

const $ = (id) => document.getElementById(id);
const READY_EVERY_MS = 10000;
let repeatLast = null; // re-runs the last search (when k changes)

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function refreshStatus() {
  const status = $("status");
  try {
    const response = await fetch("/ready");
    if (response.ok) {
      const ready = await response.json();
      status.textContent = `version ${ready.version} · ${ready.collection_size} images`;
      status.classList.remove("down");
    } else {
      status.textContent = `not ready: ${await errorText(response)}`;
      status.classList.add("down");
    }
  } catch {
    status.textContent = "server unreachable";
    status.classList.add("down");
  }
}

function showPreview(src) {
  const preview = $("preview");
  preview.src = src;
  preview.hidden = false;
  $("drop-hint").hidden = true;
}

function render(answer, what) {
  $("summary").textContent =
    `${answer.k_returned} of ${answer.k_requested} neighbours of ${what} · version ${answer.version} · ` +
    `${answer.took_ms.toFixed(1)} ms`;
  const grid = $("results");
  grid.replaceChildren(...answer.results.map((hit) => {
    const item = document.createElement("li");
    item.className = "hit";
    item.tabIndex = 0;
    item.dataset.id = hit.id;
    item.title = hit.path;
    const img = document.createElement("img");
    img.src = hit.thumbnail_url;
    img.alt = hit.path;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = hit.label ?? "";
    meta.append(score, label);
    item.append(img, meta);
    const open = () => searchSimilar(hit);
    item.addEventListener("click", open);
    item.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return item;
  }));
}

async function run(request, what) {
  $("message").textContent = "";
  $("summary").textContent = "searching…";
  try {
    const response = await request;
    if (!response.ok) {
      $("summary").textContent = "";
      $("message").textContent = await errorText(response);
      return;
    }
    render(await response.json(), what);
  } catch {
    $("summary").textContent = "";
    $("message").textContent = "server unreachable";
  }
}

function searchFile(file) {
  if (!file) return;
  showPreview(URL.createObjectURL(file));
  repeatLast = () => {
    const form = new FormData();
    form.append("file", file);
    run(fetch(`/search?k=${$("k").value}`, { method: "POST", body: form }), file.name);
  };
  repeatLast();
}

function searchSimilar(hit) {
  showPreview(hit.thumbnail_url);
  repeatLast = () => run(fetch(`/images/${hit.id}/similar?k=${$("k").value}`), hit.path);
  repeatLast();
}

function wireDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    searchFile(e.target.files[0]);
    e.target.value = ""; // picking the same file again must search again
  });
  $("k").addEventListener("change", () => repeatLast?.());
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
}

wireDrop();
refreshStatus();
setInterval(refreshStatus, READY_EVERY_MS);

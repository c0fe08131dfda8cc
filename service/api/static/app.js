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
      status.textContent = `version ${ready.version} · ${ready.collection_size} images` + qualityText(ready) +
        await trainingText();
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

// label-free quality of the live version (trainer/quality.py), and leave-one-out kNN when there are labels
function qualityText(ready) {
  const q = ready.quality;
  let text = q ? ` · self-retrieval top-1 ${q.self_top1.toFixed(1)}% (top-10 ${q.self_top10.toFixed(1)}%)` : "";
  if (ready.knn) {
    const top1 = Object.entries(ready.knn).find(([key]) => key.startsWith("top1@"));
    if (top1) text += ` · kNN top-1 ${top1[1].toFixed(1)}%`;
  }
  return text;
}

// a training job running now (the background trainer after the first version, or one posted by hand)
async function trainingText() {
  try {
    const response = await fetch("/jobs?limit=1");
    if (!response.ok) return "";
    const [job] = await response.json();
    if (!job || !job.phase_description) return ""; // described only while the job runs
    const p = job.progress || {};
    const epochs = p.epochs ? ` epoch ${p.epoch}/${p.epochs}` : "";
    return ` · training in the background (${p.phase}${epochs}: ${job.phase_description})`;
  } catch {
    return "";
  }
}

// cosines of a young model crowd near 1: show as many digits as it takes to tell the hits apart
function scoreDigits(hits) {
  const scores = hits.map((h) => h.score);
  const spread = Math.max(...scores) - Math.min(...scores);
  if (!(spread > 0)) return 4;
  return Math.min(7, Math.max(3, 1 - Math.floor(Math.log10(spread))));
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
  const digits = scoreDigits(answer.results);
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
    score.textContent = `${hit.score.toFixed(digits)} · p${hit.percentile.toFixed(2)}`;
    score.title = `cosine ${hit.score} · closer than ${hit.percentile.toFixed(4)}% of random pairs of the collection`;
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

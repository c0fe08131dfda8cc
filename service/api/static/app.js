// npid-search page: pick or drop an image, POST /search, show the neighbours; click one to search by it.
// Browse: the collection (GET /images) as a grid that loads on as it scrolls, filtered by label; click an image
// for its neighbours. Duplicates: the groups of near-duplicate images (GET /duplicates), a page at a time.
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
        watchText(ready.watch) + await trainingText();
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

// the folder watcher (npid watch) while it has files to index: how many are done and how many wait
function watchText(watch) {
  if (!watch || watch.stale || !watch.pending) return "";
  return ` · indexing new files: ${watch.done} done, ${watch.pending} waiting` +
    (watch.skipped ? `, ${watch.skipped} unreadable` : "");
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
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${hit.score.toFixed(digits)} · p${hit.percentile.toFixed(2)}`;
    score.title = `cosine ${hit.score} · closer than ${hit.percentile.toFixed(4)}% of random pairs of the collection`;
    return thumbnailTile(hit, hit.label ?? "", "hit", () => searchSimilar(hit), score);
  }));
}

function thumbnailImage(image) {
  const img = document.createElement("img");
  img.src = image.thumbnail_url;
  img.alt = image.path;
  img.loading = "lazy";
  return img;
}

// one collection image as a grid tile: its thumbnail, a caption (after `extra`, e.g. a score), an action on click
function thumbnailTile(image, caption, className, open, extra = null) {
  const item = document.createElement("li");
  item.className = className;
  item.tabIndex = 0;
  item.dataset.id = image.id;
  item.title = image.path;
  const img = thumbnailImage(image);
  const meta = document.createElement("div");
  meta.className = "meta";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = caption;
  meta.append(...(extra ? [extra, label] : [label]));
  item.append(img, meta);
  item.addEventListener("click", open);
  item.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return item;
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

// ------------------------------------------------------------------------------------------- views

const VIEWS = ["search", "browse", "duplicates"];

function showView() {
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search";
  for (const view of VIEWS) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).classList.toggle("active", view === name);
  }
  if (name === "browse" && !browse.started) browseReset();
  if (name === "duplicates" && !dups.loaded) loadDuplicates(0);
}

// ------------------------------------------------------------------------------------------- browse

const BROWSE_PAGE = 24;
const browse = { started: false, offset: 0, total: null, loading: false, generation: 0 };
const browseObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadBrowse();
}, { rootMargin: "200px" });

function browseReset() {
  browse.started = true;
  browse.offset = 0;
  browse.total = null;
  browse.loading = false;
  browse.generation += 1;
  $("browse-grid").replaceChildren();
  loadBrowse();
}

function fillLabels(labels) {
  const select = $("browse-label");
  const wanted = [["", "all"], ...Object.entries(labels).map(([label, n]) => [label, `${label} (${n})`])];
  if ([...select.options].map((o) => o.textContent).join("\n") === wanted.map((w) => w[1]).join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...wanted.map(([value, text]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    return option;
  }));
  select.value = wanted.some((w) => w[0] === chosen) ? chosen : "";
}

function tile(image) {
  return thumbnailTile(image, image.label ?? image.path, "hit tile", () => {
    location.hash = "#search";
    searchSimilar(image);
  });
}

async function loadBrowse() {
  if (browse.loading || (browse.total !== null && browse.offset >= browse.total)) return;
  browse.loading = true;
  const generation = browse.generation;
  const params = new URLSearchParams({ offset: browse.offset, limit: BROWSE_PAGE, sort: $("browse-sort").value });
  if ($("browse-label").value) params.set("label", $("browse-label").value);
  try {
    const response = await fetch(`/images?${params}`);
    if (generation !== browse.generation) return; // the filter changed meanwhile
    if (!response.ok) {
      $("browse-message").textContent = await errorText(response);
      return;
    }
    const page = await response.json();
    $("browse-message").textContent = "";
    fillLabels(page.labels);
    browse.total = page.total;
    browse.offset += page.images.length;
    $("browse-grid").append(...page.images.map(tile));
    $("browse-summary").textContent = `${browse.offset} of ${page.total} images · version ${page.version}`;
    $("browse-more").hidden = browse.offset >= page.total;
  } catch {
    $("browse-message").textContent = "server unreachable";
  } finally {
    if (generation === browse.generation) {
      browse.loading = false;
      browseObserver.unobserve($("browse-more")); // observing again reports whether it is still in view
      if (!$("browse-more").hidden) browseObserver.observe($("browse-more"));
    }
  }
}

// ------------------------------------------------------------------------------------------- duplicates

const DUP_PAGE = 10;
const dups = { loaded: false, offset: 0 };
const SOURCES = {
  request: "as asked",
  calibrated: "calibrated without labels when the version was published",
  estimated: "estimated without labels by the server",
  nearest: "top 5% of nearest-neighbour cosines",
};

function member(m) {
  const link = document.createElement("a");
  link.className = "member";
  link.href = m.image_url;
  link.target = "_blank";
  link.title = `${m.path} · best cosine in the group ${m.score}`;
  const img = thumbnailImage(m);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = m.score.toFixed(5);
  const path = document.createElement("span");
  path.textContent = m.path;
  link.append(img, score, path);
  return link;
}

function groupItem(group) {
  const item = document.createElement("li");
  item.className = "group";
  const title = document.createElement("h2");
  const note = document.createElement("span");
  note.textContent = ` · best cosine ${group.best_score.toFixed(5)}` +
    (group.size > group.members.length ? ` · first ${group.members.length} shown` : "");
  title.append(`${group.size} images`, note);
  const members = document.createElement("div");
  members.className = "members";
  members.append(...group.members.map(member));
  item.append(title, members);
  return item;
}

async function loadDuplicates(offset) {
  dups.loaded = true;
  const params = new URLSearchParams({ offset, limit: DUP_PAGE });
  const threshold = $("dup-threshold").value.trim();
  if (threshold !== "") params.set("threshold", threshold);
  $("dup-message").textContent = "";
  $("dup-summary").textContent = "finding groups…";
  try {
    const response = await fetch(`/duplicates?${params}`);
    if (!response.ok) {
      $("dup-summary").textContent = "";
      $("dup-message").textContent = await errorText(response);
      return;
    }
    const answer = await response.json();
    dups.offset = offset;
    if (threshold === "") $("dup-threshold").placeholder = answer.threshold.toFixed(5);
    $("dup-summary").textContent =
      `${answer.total_groups} groups · ${answer.total_images} images at cosine ≥ ${answer.threshold.toFixed(5)} ` +
      `(${SOURCES[answer.threshold_source]}) · version ${answer.version}`;
    $("dup-groups").replaceChildren(...answer.groups.map(groupItem));
    const last = offset + answer.groups.length;
    $("dup-page").textContent = answer.total_groups ? `groups ${offset + 1}–${last} of ${answer.total_groups}` : "";
    $("dup-prev").disabled = offset === 0;
    $("dup-next").disabled = last >= answer.total_groups;
  } catch {
    $("dup-summary").textContent = "";
    $("dup-message").textContent = "server unreachable";
  }
}

function wireViews() {
  window.addEventListener("hashchange", showView);
  $("browse-label").addEventListener("change", browseReset);
  $("browse-sort").addEventListener("change", browseReset);
  $("browse-more").addEventListener("click", loadBrowse);
  $("dup-apply").addEventListener("click", () => loadDuplicates(0));
  $("dup-threshold").addEventListener("keydown", (e) => { if (e.key === "Enter") loadDuplicates(0); });
  $("dup-prev").addEventListener("click", () => loadDuplicates(Math.max(0, dups.offset - DUP_PAGE)));
  $("dup-next").addEventListener("click", () => loadDuplicates(dups.offset + DUP_PAGE));
}

wireDrop();
wireViews();
showView();
refreshStatus();
setInterval(refreshStatus, READY_EVERY_MS);

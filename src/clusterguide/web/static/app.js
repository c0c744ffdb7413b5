// The gallery page: one card per leaf cluster; draws go through a queue, one at a time (the server
// runs one generator call at a time anyway), with a progress bar while images are made.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  run: null,
  limits: { n_max: 64, n_default: 16, seed_max: Number.MAX_SAFE_INTEGER, name_max: 100 },
  cards: new Map(), // cluster path -> {el, cluster, shown: {method, seed, n} | null}
  queue: [], // {path, method, seed, n}
  busy: false,
  current: null, // path of the card being drawn
  batchTotal: 0,
  batchDone: 0,
};

// ---- API --------------------------------------------------------------------------------------
// The server puts a CSRF token into the page when it was opened with its access token (the address
// `clusterguide serve` prints); every POST sends it back. Without it the page can only show the run.
const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify(body),
  };
  const res = await fetch(path, init);
  let data = null;
  try {
    data = await res.json();
  } catch (_) {
    data = null;
  }
  if (!res.ok) {
    throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  }
  return data;
}

// the server takes seeds up to 2**63 - 1; the page's numbers are exact up to 2**53 - 1
const seedMax = () => Math.min(state.limits.seed_max, Number.MAX_SAFE_INTEGER);

// ---- formatting -------------------------------------------------------------------------------
const fmtShare = (x) => (x == null ? "—" : `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`);
const fmtNum = (x, digits = 2) => (x == null ? "—" : Number(x).toFixed(digits));
const fmtInt = (x) => (x == null ? "—" : Number(x).toLocaleString("en-US"));

function fidelityClass(f) {
  if (f == null) return "none";
  if (f >= 0.8) return "good";
  if (f >= 0.5) return "fair";
  return "poor";
}

// ---- toolbar ----------------------------------------------------------------------------------
function readControls() {
  const method = $("#method").value;
  const seed = Number($("#seed").value);
  const n = Number($("#count").value);
  const { n_max } = state.limits;
  const seed_max = seedMax();
  const seedOk = $("#seed").value.trim() !== "" && Number.isInteger(seed) && seed >= 0 && seed <= seed_max;
  const nOk = $("#count").value.trim() !== "" && Number.isInteger(n) && n >= 1 && n <= n_max;
  $("#seed").setAttribute("aria-invalid", String(!seedOk));
  $("#count").setAttribute("aria-invalid", String(!nOk));
  if (!seedOk) throw new Error(`seed must be a whole number from 0 to ${seed_max}`);
  if (!nOk) throw new Error(`count must be a whole number from 1 to ${n_max}`);
  return { method, seed, n };
}

function toast(text, kind = "info") {
  const el = $("#toast");
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 6000 : 2500);
}

// ---- cards ------------------------------------------------------------------------------------
function labelOf(path) {
  const card = state.cards.get(path);
  const name = card ? card.cluster.name : "";
  return name ? `${path} “${name}”` : path;
}

function crumbsOf(cluster) {
  // ancestors of a refined cluster, with their names, so "1/0" reads as "smiling › 0"
  const parts = cluster.path.split("/");
  const byPath = new Map(state.run.clusters.map((c) => [c.path, c]));
  const out = [];
  for (let i = 1; i < parts.length; i++) {
    const p = parts.slice(0, i).join("/");
    const c = byPath.get(p);
    out.push(c && c.name ? `${p} “${c.name}”` : p);
  }
  return out;
}

// issue 12's bars (the run's `goal`: fidelity and recall as a share of what exact samples reach)
function goalText(goal) {
  const bars = state.run && state.run.goal;
  if (!bars || !goal || goal.imle === null || goal.imle === undefined) return "";
  const text = `fidelity ≥ ${bars.fidelity} and recall ≥ ${bars.recall_share} × ceiling`;
  if (goal.imle) return `\nmeets ${text}`;
  const fix = goal.corrected ? " (Corrected mapping meets them)" : "";
  return `\nshort of ${text}${fix}`;
}

function makeCard(cluster) {
  const el = $("#card-template").content.firstElementChild.cloneNode(true);
  el.dataset.cluster = cluster.path;
  $(".path", el).textContent = cluster.path;
  const input = $(".name-input", el);
  input.value = cluster.name;
  input.maxLength = state.limits.name_max;
  $(".size", el).textContent = fmtInt(cluster.size);
  $(".share", el).textContent = fmtShare(cluster.share);
  $(".fidelity", el).textContent = fmtNum(cluster.fidelity);
  const meter = $(".meter", el);
  meter.dataset.level = fidelityClass(cluster.fidelity);
  $("span", meter).style.width = `${Math.round(100 * (cluster.fidelity || 0))}%`;
  $(".fid", el).title = "share of mapped samples that land in this cluster" + goalText(cluster.meets_goal);
  const crumbs = crumbsOf(cluster);
  if (crumbs.length) {
    const c = $(".crumbs", el);
    c.textContent = `refined from ${crumbs.join(" › ")} at layer ${cluster.layer}`;
    c.hidden = false;
  }
  // a cluster too small for a mapping is drawn exactly; the card says so
  const note = cluster.mapping ? "" : `no mapping${cluster.skipped ? ` (${cluster.skipped})` : ""}: drawn exactly`;
  showMessage(el, note, "note");

  const card = { el, cluster, note, shown: null };
  const form = $(".name-form", el);
  const save = $(".save", el);
  const dirty = () => input.value.trim().replace(/\s+/g, " ") !== card.cluster.name;
  input.addEventListener("input", () => { save.disabled = !dirty(); });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      input.value = card.cluster.name;
      save.disabled = true;
      input.blur();
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (dirty()) rename(card, input.value);
  });
  $(".resample", el).addEventListener("click", () => {
    let controls;
    try {
      controls = readControls();
    } catch (err) {
      toast(err.message, "error");
      return;
    }
    const seed = card.shown ? (card.shown.seed + 1) % (seedMax() + 1) : controls.seed;
    enqueue([{ path: cluster.path, method: controls.method, seed, n: controls.n }]);
  });
  state.cards.set(cluster.path, card);
  return el;
}

function showMessage(el, text, kind = "error") {
  const m = $(".message", el);
  m.textContent = text;
  m.dataset.kind = kind;
  m.hidden = !text;
}

function setOverlay(card, text) {
  const ov = $(".overlay", card.el);
  ov.hidden = !text;
  $(".overlay-text", ov).textContent = text || "";
  card.el.classList.toggle("busy", Boolean(text));
  $(".resample", card.el).disabled = Boolean(text);
}

async function rename(card, name) {
  const input = $(".name-input", card.el);
  const save = $(".save", card.el);
  save.disabled = true;
  try {
    const res = await api("/api/name", { cluster: card.cluster.path, name });
    card.cluster.name = res.name;
    const rc = state.run.clusters.find((c) => c.path === res.cluster);
    if (rc) rc.name = res.name;
    input.value = res.name;
    showMessage(card.el, card.note, "note");
    card.el.classList.add("saved");
    setTimeout(() => card.el.classList.remove("saved"), 1200);
    toast(res.name ? `Cluster ${res.cluster} is now “${res.name}”` : `Cluster ${res.cluster} has no name`);
    refreshCrumbs();
  } catch (err) {
    showMessage(card.el, err.message);
    save.disabled = false;
  }
}

function refreshCrumbs() {
  for (const card of state.cards.values()) {
    const crumbs = crumbsOf(card.cluster);
    if (crumbs.length) {
      $(".crumbs", card.el).textContent = `refined from ${crumbs.join(" › ")} at layer ${card.cluster.layer}`;
    }
  }
}

// ---- drawing ----------------------------------------------------------------------------------
function enqueue(jobs) {
  for (const job of jobs) {
    const card = state.cards.get(job.path);
    if (!card) continue;
    if (!card.cluster.mapping) job.method = "exact";
    // a newer request for the same card replaces one still waiting
    state.queue = state.queue.filter((q) => q.path !== job.path);
    state.queue.push(job);
    setOverlay(card, "Queued");
  }
  if (!state.busy) {
    state.batchTotal = state.queue.length;
    state.batchDone = 0;
  } else {
    state.batchTotal = state.batchDone + 1 + state.queue.length;
  }
  updateProgress();
  pump();
}

function updateProgress() {
  const current = state.current;
  const box = $("#progress");
  const total = state.batchTotal;
  if (!state.busy && state.queue.length === 0) {
    box.hidden = true;
    document.body.classList.remove("working");
    return;
  }
  box.hidden = false;
  document.body.classList.add("working");
  const shown = Math.min(state.batchDone + 1, total);
  $("#progress-text").textContent = current
    ? `Drawing ${labelOf(current)} · ${shown} of ${total}`
    : `Drawing ${shown} of ${total}`;
  $("#progress-bar").style.width = `${Math.round((100 * state.batchDone) / Math.max(total, 1))}%`;
}

async function pump() {
  if (state.busy) return;
  state.busy = true;
  while (state.queue.length) {
    const job = state.queue.shift();
    const card = state.cards.get(job.path);
    state.current = job.path;
    updateProgress();
    setOverlay(card, "Drawing…");
    try {
      const res = await api("/api/sample", { cluster: job.path, method: job.method, seed: job.seed, n: job.n });
      await showDraw(card, res);
      showMessage(card.el, card.note, "note");
    } catch (err) {
      showMessage(card.el, err.message);
    }
    if (!state.queue.some((q) => q.path === job.path)) setOverlay(card, "");
    state.batchDone += 1;
  }
  state.busy = false;
  state.current = null;
  updateProgress();
}

function showDraw(card, res) {
  const img = $(".grid", card.el);
  img.width = res.width;
  img.height = res.height;
  img.alt = `${res.n} samples of cluster ${res.cluster} (${res.method}, seed ${res.seed})`;
  const loaded = new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
  });
  img.src = res.image;
  card.shown = { method: res.method, seed: res.seed, n: res.n };
  card.el.dataset.seed = String(res.seed);
  card.el.dataset.method = res.method;
  const extra = res.acceptance_rate != null ? ` · accepted ${(100 * res.acceptance_rate).toFixed(1)}%` : "";
  $(".meta", card.el).textContent = `${res.method} · seed ${res.seed} · ${res.n} images${extra}`;
  $(".meta", card.el).title = `drawn in ${res.seconds}s${res.cached ? " (cached)" : ""}`;
  const stem = `cluster-${res.cluster.replace(/\//g, "-")}_${res.method}_seed${res.seed}_n${res.n}`;
  for (const [cls, url, ext] of [[".dl-png", res.grid_url, "png"], [".dl-npz", res.npz_url, "npz"]]) {
    const a = $(cls, card.el);
    a.href = url;
    a.download = `${stem}.${ext}`;
    a.removeAttribute("aria-disabled");
  }
  return loaded;
}

function drawAll() {
  let controls;
  try {
    controls = readControls();
  } catch (err) {
    toast(err.message, "error");
    return;
  }
  enqueue([...state.cards.keys()].map((path) => ({ path, ...controls })));
}

// ---- start ------------------------------------------------------------------------------------
async function main() {
  $("#toolbar").addEventListener("submit", (ev) => {
    ev.preventDefault();
    drawAll();
  });
  $("#seed-random").addEventListener("click", () => {
    $("#seed").value = String(Math.floor(Math.random() * 100000));
    drawAll();
  });
  let run;
  try {
    run = await api("/api/run");
  } catch (err) {
    $("#run-meta").textContent = `could not load the run: ${err.message}`;
    return;
  }
  state.run = run;
  Object.assign(state.limits, run.limits);
  $("#count").max = String(run.limits.n_max);
  $("#count").value = String(run.limits.n_default);
  $("#seed").max = String(seedMax());
  document.title = `${run.run} · clusterguide gallery`;
  $("#run-name").textContent = run.run;
  const leaves = run.clusters.filter((c) => c.leaf);
  const refined = run.clusters.length > leaves.length ? `, ${run.clusters.length - leaves.length} refined` : "";
  $("#run-meta").textContent =
    `${run.generator} · layer ${run.layer} · ${leaves.length} clusters${refined} · ` +
    `${fmtInt(run.samples)} prior samples · seed ${run.seed}`;
  const cards = $("#cards");
  cards.replaceChildren(...leaves.map(makeCard));
  if (!csrfToken()) {
    $("#run-meta").textContent =
      "This page needs its access token to draw and name clusters: open the address " +
      "`clusterguide serve` printed (it ends in ?token=…).";
    document.body.classList.add("locked");
    for (const el of document.querySelectorAll("button, input, select")) el.disabled = true;
    return;
  }
  drawAll();
}

main();

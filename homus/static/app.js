// homus drawing page: strokes in HOMUS tablet units, predicted after every stroke; collect mode saves them.
"use strict";

// The pad is the HOMUS tablet: TABLET_W x TABLET_H units, whatever its size on screen.
const TABLET_W = 200, TABLET_H = 270;
const $ = (id) => document.getElementById(id);
const pad = $("pad"), ctx = pad.getContext("2d");

let strokes = [];          // [[[x, y], ...], ...] in tablet units, in the order drawn
let current = null;        // the stroke being drawn
let activePointer = null;  // one pen, finger or mouse at a time
let seq = 0;               // predictions asked; answers to older ones are dropped
let saving = false;        // one save at a time: a double click must not save the drawing twice
let mode = "predict";
let labels = [];
let counts = { total: 0, labels: {}, writers: {} };

// How long the page waits for an answer before saying so (a save may take longer: it reads the folder).
const PREDICT_TIMEOUT_MS = 20000, SAVE_TIMEOUT_MS = 60000;

// What the page last sent and got, for tests and curious users.
window.homusLastStrokes = null;
window.homusLastPrediction = null;
window.homusPending = 0;

function toTablet(ev) {
  const r = pad.getBoundingClientRect();
  const x = Math.round((ev.clientX - r.left) / r.width * TABLET_W);
  const y = Math.round((ev.clientY - r.top) / r.height * TABLET_H);
  return [Math.min(Math.max(x, 0), TABLET_W), Math.min(Math.max(y, 0), TABLET_H)];
}

// The writer's name is remembered where the browser allows site data; where it does not, it is not.
function storageGet(key) { try { return localStorage.getItem(key); } catch { return null; } }
function storageSet(key, value) { try { localStorage.setItem(key, value); } catch { /* site data blocked */ } }

let density = null;        // the media query of the current pixel density: the bitmap follows a change
function resize() {
  const r = pad.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  pad.width = Math.max(1, Math.round(r.width * dpr));
  pad.height = Math.max(1, Math.round(r.height * dpr));
  $("units-per-px").textContent = r.width ? (TABLET_W / r.width).toFixed(2) : "?";
  if (density) density.removeEventListener("change", resize);
  density = window.matchMedia(`(resolution: ${dpr}dppx)`);  // another screen, or zoom, without a resize
  density.addEventListener("change", resize);
  redraw();
}

function redraw() {
  const sx = pad.width / TABLET_W, sy = pad.height / TABLET_H;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#eef1f4"; ctx.lineWidth = 1;          // a 50-unit grid, to judge size
  for (let x = 50; x < TABLET_W; x += 50) { ctx.beginPath(); ctx.moveTo(x * sx, 0); ctx.lineTo(x * sx, pad.height); ctx.stroke(); }
  for (let y = 50; y < TABLET_H; y += 50) { ctx.beginPath(); ctx.moveTo(0, y * sy); ctx.lineTo(pad.width, y * sy); ctx.stroke(); }
  ctx.strokeStyle = "#1b1f24"; ctx.fillStyle = "#1b1f24";
  ctx.lineWidth = Math.max(2, 2.5 * sx); ctx.lineCap = "round"; ctx.lineJoin = "round";
  for (const s of current ? strokes.concat([current]) : strokes) {
    if (s.length === 1) { ctx.beginPath(); ctx.arc(s[0][0] * sx, s[0][1] * sy, ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fill(); continue; }
    ctx.beginPath();
    s.forEach(([x, y], i) => (i ? ctx.lineTo(x * sx, y * sy) : ctx.moveTo(x * sx, y * sy)));
    ctx.stroke();
  }
  $("stroke-count").textContent = `${strokes.length} stroke${strokes.length === 1 ? "" : "s"}`;
}

function addPoint(ev) {
  const p = toTablet(ev), last = current[current.length - 1];
  if (!last || last[0] !== p[0] || last[1] !== p[1]) current.push(p);
}

pad.addEventListener("pointerdown", (ev) => {
  if (activePointer !== null || ev.button > 0) return;
  ev.preventDefault();
  activePointer = ev.pointerId;
  pad.setPointerCapture(ev.pointerId);
  current = [];
  addPoint(ev);
  redraw();
});
pad.addEventListener("pointermove", (ev) => {
  if (ev.pointerId !== activePointer) return;
  ev.preventDefault();
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
  for (const e of events.length ? events : [ev]) addPoint(e);
  redraw();
});
function endStroke(ev) {
  if (ev.pointerId !== activePointer) return;
  ev.preventDefault();
  activePointer = null;
  if (current && current.length) strokes.push(current);
  current = null;
  redraw();
  predict();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
pad.addEventListener("contextmenu", (ev) => ev.preventDefault());

// An Error whose message says what happened and what to do; `status` is the HTTP status, if any,
// and `timedOut` says that no answer came in time (a save may then have landed all the same).
function apiError(message, status, timedOut = false) {
  const e = new Error(message); e.status = status; e.timedOut = timedOut; return e;
}

async function api(path, body, timeoutMs = PREDICT_TIMEOUT_MS) {
  const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), timeoutMs);
  const opts = { signal: ctl.signal, ...(body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }) };
  try {
    let res;
    try {
      res = await fetch(path, opts);
    } catch {
      throw apiError(ctl.signal.aborted
        ? `The server gave no answer within ${timeoutMs / 1000} s; is homus serve busy or stopped? Your drawing is kept.`
        : `The server at ${location.host} did not answer; is homus serve still running? Your drawing is kept.`,
        undefined, ctl.signal.aborted);
    }
    const data = await res.json().catch(() => ({ detail: `${res.status} ${res.statusText}` }));
    if (!res.ok) throw apiError(data.detail || `${res.status} ${res.statusText}`, res.status);
    return data;
  } finally {
    clearTimeout(timer);
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// The answer shown is always the answer to the strokes on the pad: none while there is none.
function showEmpty(note = "Draw a symbol.") {
  $("answer").classList.remove("pending");
  $("answer").removeAttribute("aria-busy");
  $("top-label").textContent = "-";
  $("top-probability").textContent = "";
  $("predictions").replaceChildren();
  const hint = document.createElement("span"); hint.className = "muted small"; hint.textContent = note;
  $("inputs").replaceChildren(hint);
  $("saliency").replaceChildren();
  $("saliency").hidden = true;
  $("ms").textContent = "";
  window.homusLastPrediction = null;
}

async function predict() {
  const mine = ++seq;
  if (!strokes.length) { showEmpty(); showError(""); window.homusLastStrokes = []; return; }
  const sent = JSON.parse(JSON.stringify(strokes));
  $("answer").classList.add("pending");  // what is shown belongs to the drawing before this stroke
  $("answer").setAttribute("aria-busy", "true");
  window.homusPending++;
  try {
    const data = await api("/api/predict", { strokes: sent, top_k: 5, inputs: true, explain: true });
    if (mine !== seq) return;
    window.homusLastStrokes = sent;
    window.homusLastPrediction = data;
    showError("");
    showPrediction(data);
  } catch (e) {
    if (mine !== seq) return;
    window.homusLastStrokes = null;
    showEmpty("No answer for this drawing.");
    showError(e.status === 422 ? `${e.message}. Undo a stroke or clear the pad.` : e.message);
  } finally {
    window.homusPending--;
  }
}

function showPrediction(data) {
  const [best] = data.predictions;
  $("answer").classList.remove("pending");
  $("answer").removeAttribute("aria-busy");
  $("top-label").textContent = best.label;
  $("top-probability").textContent = `${(100 * best.probability).toFixed(1)} %`;
  $("predictions").replaceChildren(...data.predictions.map((p) => {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = `${(100 * p.probability).toFixed(1)}%`;
    const name = document.createElement("span"); name.className = "name"; name.textContent = p.label;
    const prob = document.createElement("span"); prob.className = "p"; prob.textContent = `${(100 * p.probability).toFixed(1)} %`;
    li.append(bar, name, prob);
    return li;
  }));
  const figures = [];
  for (const m of data.models) {
    (m.images || []).forEach((src, i) => {
      const fig = document.createElement("figure");
      const img = document.createElement("img"); img.src = src; img.alt = `${m.run}: ${m.channels[i]}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `${m.channels[i]} ${m.size.join("x")}` + (data.models.length > 1 ? ` (${m.run})` : "");
      fig.append(img, cap);
      figures.push(fig);
    });
  }
  $("inputs").replaceChildren(...figures);
  const maps = data.models.filter((m) => m.saliency).map((m) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img"); img.src = m.saliency; img.alt = `${m.run}: Grad-CAM of ${best.label}`;
    const cap = document.createElement("figcaption");
    cap.textContent = `why ${best.label}` + (data.models.length > 1 ? ` (${m.run})` : "");
    fig.append(img, cap);
    return fig;
  });
  $("saliency").replaceChildren(...maps);
  $("saliency").hidden = !maps.length;
  $("models").textContent = data.models.length > 1 ? `${data.models.length} models voting.` : `Model: ${data.models[0].run}.`;
  $("ms").textContent = `${data.ms.toFixed(1)} ms on the server.`;
}

// While a save is on its way, the strokes it sends stay as they are (a new stroke may be drawn).
function undo() { if (strokes.length && !saving) { strokes.pop(); redraw(); predict(); } }
function clearPad() { if (saving) return; strokes = []; current = null; activePointer = null; redraw(); predict(); }

// --- collect mode ---------------------------------------------------------------------------
function setMode(m) {
  mode = m;
  $("collect").hidden = m !== "collect";
  for (const [id, name] of [["mode-predict", "predict"], ["mode-collect", "collect"]]) {
    $(id).classList.toggle("active", m === name);
    $(id).setAttribute("aria-selected", String(m === name));
  }
  if (m === "collect") {
    if (!labels.length) loadLabels().catch((e) => { $("collect-status").textContent = labelsProblem(e); });
    refreshCounts();
  }
}

async function loadLabels() {
  labels = (await api("/api/labels")).labels;
  $("label").replaceChildren(...labels.map((l) => new Option(l, l)));
  renderCounts();
}

function labelsProblem(e) {
  return `The list of labels did not load (${e.message}); collect mode needs it: reload the page.`;
}

function renderCounts() {
  const writer = $("writer").value.trim(), mine = counts.writers[writer] || {};
  $("count-total").textContent = counts.total;
  $("counts").replaceChildren(...labels.map((l) => {
    const li = document.createElement("li");
    li.dataset.label = l;
    li.className = l === $("label").value ? "current" : "";
    li.textContent = `${l}: ${mine[l] || 0} / ${counts.labels[l] || 0}`;
    return li;
  }));
}

async function refreshCounts() {
  try {
    counts = await api("/api/samples", undefined, SAVE_TIMEOUT_MS);
  } catch (e) {  // said beside what the status line says (a save that worked stays "Saved")
    const status = $("collect-status");
    status.textContent = `${status.textContent ? status.textContent + " " : ""}(The counts did not refresh: ${e.message})`;
  }
  renderCounts();
}

function nextLabel() {
  const sel = $("label");
  sel.selectedIndex = (sel.selectedIndex + 1) % sel.options.length;
  renderCounts();
}

// What is wrong with a writer's name, as the server checks it (never cut short: two long names would merge).
function writerProblem(writer) {
  if (!writer) return "Writer: give your name, e.g. alice.";
  if (writer.length > 32) return `Writer: at most 32 characters (this one has ${writer.length}).`;
  if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(writer)) {
    return "Writer: a plain letter (a-z, A-Z) first, then plain letters, digits or _ (no spaces or accents).";
  }
  return null;
}

async function save() {
  if (saving) return;
  const writer = $("writer").value.trim(), label = $("label").value, status = $("collect-status");
  if (!strokes.length) { status.textContent = "Draw the symbol first."; return; }
  const problem = writerProblem(writer);
  if (problem) { status.textContent = problem; $("writer").focus(); return; }
  if (!labels.length || !label) {
    try { await loadLabels(); status.textContent = "The labels have loaded: pick the symbol's label, then save."; }
    catch (e) { status.textContent = labelsProblem(e); }
    return;
  }
  const sent = strokes.slice();  // these strokes, under this label: what is saved and then cleared
  saving = true;
  $("save").disabled = true;
  status.textContent = `Saving as ${label}...`;
  try {
    const data = await api("/api/samples", { label, strokes: sent, writer }, SAVE_TIMEOUT_MS);
    storageSet("homus-writer", writer);
    window.homusLastSaved = data;
    status.textContent = `Saved ${data.sample} (${label}) as ${data.path}`;
    strokes = strokes.filter((s) => !sent.includes(s));  // a stroke drawn meanwhile stays for the next
    redraw();
    predict();
    if ($("advance").checked && $("label").value === label) nextLabel();  // unless the user already chose
    await refreshCounts();
  } catch (e) {
    status.textContent = e.timedOut
      ? `Not known whether it was saved: ${e.message} Check the counts before saving it again.`
      : `Not saved: ${e.message}`;
  } finally {
    saving = false;
    $("save").disabled = false;
  }
}

// --- keys -----------------------------------------------------------------------------------
document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) {
    if (ev.key === "Enter" && mode === "collect" && t.id === "writer") { ev.preventDefault(); save(); }
    return;
  }
  // Enter and Space on a focused button, link or summary do what that control does.
  if ((ev.key === "Enter" || ev.key === " ") && t instanceof Element && t.closest("button, a, summary")) return;
  const k = ev.key.toLowerCase();
  if (k === "backspace" || k === "z") { ev.preventDefault(); undo(); }
  else if (k === "escape" || k === "c") { ev.preventDefault(); clearPad(); }
  else if (mode === "collect" && k === "enter") { ev.preventDefault(); save(); }
  else if (mode === "collect" && k === "n") { ev.preventDefault(); nextLabel(); }
});

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearPad);
$("mode-predict").addEventListener("click", () => setMode("predict"));
$("mode-collect").addEventListener("click", () => setMode("collect"));
$("save").addEventListener("click", save);
$("next").addEventListener("click", nextLabel);
$("label").addEventListener("change", renderCounts);
$("writer").addEventListener("input", renderCounts);
window.addEventListener("resize", resize);

(async function init() {
  resize();
  $("writer").value = storageGet("homus-writer") || "";
  try {
    await loadLabels();
    const health = await api("/api/health");
    $("models").textContent = health.models.length > 1 ? `${health.models.length} models voting.` : `Model: ${health.models[0].run}.`;
  } catch (e) {
    showError(`The page could not start: ${e.message}`);
  }
  document.body.dataset.ready = "1";
})();

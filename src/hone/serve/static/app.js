// hone dashboard: one page over the same /v1 API the openai client uses, plus hone's /v1/hone extensions.
// No build step, no library: DOM calls and one SVG line chart. The key lives in sessionStorage only; every
// object fetched with it lives in `state`, which a key change throws away with the whole page.
"use strict";

const KEY = "hone-key";
const state = { paths: new Set(), models: [], files: [], jobs: [], stream: null, points: [], chat: null };

// ---- plumbing ----------------------------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
function say(message, bad = false) {
  const box = $("#status");
  box.textContent = message;
  box.className = bad ? "bad" : "";
}
class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, ...(options.headers || {}) };
  let body = options.body;
  if (body && !(body instanceof FormData)) { headers["Content-Type"] = "application/json"; body = JSON.stringify(body); }
  const response = await fetch(path, { ...options, headers, body });
  if (options.raw) return response;
  if (!response.ok) throw await failure(response);
  return response.json().catch(() => ({}));
}
async function failure(response) {
  const data = await response.json().catch(() => ({}));
  return new ApiError((data.error && data.error.message) || `${response.status} ${response.statusText}`);
}
// Server-sent events read through fetch (EventSource cannot send the Authorization header): each frame's
// `event:` and `data:` lines handed to onEvent(kind, data) until the server ends the stream.
async function readEvents(path, options, onEvent) {
  const response = await api(path, { ...options, raw: true });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const kind = (frame.match(/^event: (.*)$/m) || [])[1], data = (frame.match(/^data: (.*)$/m) || [])[1];
      if (data !== undefined) onEvent(kind, data);
    }
  }
}
// Errors end up in the status line, never as an uncaught promise (the tests fail on any console error).
function guarded(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (err) {
      if (err.name === "AbortError") return;
      say(err instanceof ApiError ? err.message : `Something failed: ${err.message}`, true);
    }
  };
}
const has = (path) => state.paths.has(path);
const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : typeof x === "number" ? +x.toFixed(digits) + "" : String(x));
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => (c instanceof Node ? el("td", {}, c)
      : el("td", { text: fmt(c), class: String(c).length > 24 && !/\s/.test(String(c)) ? "wrap" : null })))))));
}
function options(select, items, label = (x) => x, value = (x) => x, blank = null) {
  const keep = select.value;
  select.replaceChildren(...(blank !== null ? [el("option", { value: "", text: blank })] : []),
    ...items.map((x) => el("option", { value: value(x), text: label(x) })));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// ---- key and sections -------------------------------------------------------------------------------------
function useKey(event) {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  // A new key starts a fresh page: nothing fetched with the old key survives in memory or on screen.
  sessionStorage.setItem(KEY, key);
  location.reload();
}

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", b.dataset.tab === name);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== name;
  ({ data: loadFiles, plan: loadPlan, watch: loadJobs, compare: loadCompare, registry: loadRuns, production: loadProduction })[name]();
}

async function start() {
  $("#key-form").addEventListener("submit", useKey);
  const key = sessionStorage.getItem(KEY);
  if (!key) { $("#key-input").focus(); return; }
  // Sections appear when the server has their endpoints (its OpenAPI schema lists them).
  const schema = await (await fetch("/openapi.json")).json();
  state.paths = new Set(Object.keys(schema.paths));
  for (const node of document.querySelectorAll("[data-needs]")) if (!has(node.dataset.needs)) node.hidden = true;
  try {
    state.models = (await api("/v1/models")).data;
  } catch (err) {
    sessionStorage.removeItem(KEY);
    say(`${err.message} Paste another key.`, true);
    $("#key-input").focus();
    return;
  }
  $("#keys").hidden = true;
  $("#tabs").hidden = false;
  $("#who").replaceChildren(el("span", { text: `key ${key.slice(0, 9)}…` }), " ",
    el("button", { type: "button", id: "switch-key", text: "Switch key", onclick: switchKey }));
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => guarded(showTab)(b.dataset.tab));
  wireData(); wirePlan(); wireWatch(); wireCompare(); wireRegistry(); wireProduction();
  await guarded(showTab)("data");
}
function switchKey() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

// ---- Data -------------------------------------------------------------------------------------------------
const bases = () => state.models.filter((m) => !m.id.startsWith("ft:"));
function wireData() {
  options($("#data-model"), bases(), (m) => m.id, (m) => m.id, "(no token counts)");
  if (bases().length) $("#data-model").value = bases()[0].id;
  const input = $("#data-file"), drop = $("#drop");
  // A real button opens the file picker: Enter and Space work on it as on any button.
  $("#choose-file").addEventListener("click", () => { input.value = ""; input.click(); });
  input.addEventListener("change", guarded(() => input.files[0] && checkFile(input.files[0])));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guarded(async (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) await checkFile(e.dataTransfer.files[0]);
  }));
}

async function checkFile(file) {
  const out = $("#data-report");
  out.replaceChildren(el("p", { text: `Checking ${file.name}…` }));
  if (!has("/v1/hone/data/check")) { out.replaceChildren(uploadButton(file, true)); return; }
  const form = new FormData();
  form.append("file", file);
  if ($("#data-model").value) form.append("model", $("#data-model").value);
  const report = await api("/v1/hone/data/check", { method: "POST", body: form });
  out.replaceChildren(...renderReport(report, file));
  say(`Checked ${file.name}.`);
}

function highlight(text, field) {
  // The offending field's key in the line, marked: messages[0].role -> "role"
  const name = field ? field.split(/[.[\]]/).filter((p) => p && !/^\d+$/.test(p)).pop() : null;
  const at = name ? text.indexOf(`"${name}"`) : -1;
  if (at < 0) return el("code", { text });
  const end = text.indexOf(",", at) >= 0 ? Math.min(text.indexOf(",", at), text.indexOf("}", at) >= 0 ? text.indexOf("}", at) : Infinity) : text.length;
  return el("code", {}, text.slice(0, at), el("mark", { text: text.slice(at, end) }), text.slice(end));
}

function renderReport(report, file) {
  const f = report.files[0], v = f.validation;
  const problems = Object.values(v.problems).flat();
  const bad = v.skipped > 0 || problems.some((p) => p.kind !== "too_long");
  const parts = [el("h3", { text: `${file.name}: ${f.shape || "unknown shape"}` }),
    el("p", { class: bad ? "bad" : "good",
      text: `${f.records} records read, ${f.valid} valid, ${v.skipped} skipped` + (bad ? ": fix the lines below before uploading." : ".") })];
  if (problems.length) {
    parts.push(el("h4", { text: `Problems (${Object.values(v.counts).reduce((a, b) => a + b, 0)})` }),
      table(["line", "field", "problem", "the line"], problems.map((p) => [p.line ?? "–", p.field ?? "–", p.message,
        report.lines[String(p.line)] !== undefined ? highlight(report.lines[String(p.line)], p.field) : "–"])));
  }
  const findings = [["exact duplicates", f.exact_duplicates], ["near-duplicates", f.near_duplicates], ["conflicting answers", f.conflicts]]
    .map(([name, x]) => [name, x.groups ?? x.inputs ?? 0, (x.examples || []).slice(0, 5).map((g) => `lines ${g.join(" = ")}`).join("; ") || "–"]);
  for (const [kind, x] of Object.entries(f.pii || {})) findings.push([`PII: ${kind}`, x.count, x.lines.slice(0, 8).join(", ")]);
  findings.push(["short answers", f.short_outputs.count, f.short_outputs.lines.slice(0, 8).join(", ") || "–"]);
  if (report.leakage && report.leakage.length) findings.push(["leakage between files", report.leakage.length, "–"]);
  parts.push(el("h4", { text: "Quality" }), table(["finding", "count", "lines"], findings));
  parts.push(el("h4", { text: "Split" }), el("p", { id: "split",
    text: `train ${report.split.train}, validation ${report.split.validation} (a job holds out ${report.split.validation_fraction * 100}% when no validation file is given)` }));
  if (f.tokens && f.tokens.histogram) parts.push(el("h4", { text: `Length in tokens (max ${f.tokens.max}, mean ${fmt(f.tokens.mean, 1)})` }), histogram(f.tokens.histogram));
  if (f.example && f.example.text) {
    const pieces = f.example.text.split(/(\[\[[\s\S]*?\]\])/).map((s) => (s.startsWith("[[") ? el("mark", { class: "trained", text: s.slice(2, -2) }) : s));
    parts.push(el("h4", { text: `Line ${f.example.line} as training renders it (trained tokens marked)` }), el("pre", { class: "rendered" }, pieces));
  }
  parts.push(uploadButton(file, !bad));
  return parts;
}

function histogram(h) {
  const counts = h.counts || [], edges = h.edges || [], top = Math.max(1, ...counts), w = 1200 / Math.max(1, counts.length);
  const svg = svgEl("svg", { viewBox: "0 0 1200 120", role: "img", "aria-label": "token length histogram", class: "hist" });
  counts.forEach((c, i) => {
    const bar = svgEl("rect", { x: i * w + 1, y: 100 - (c / top) * 95, width: w - 2, height: (c / top) * 95 });
    bar.append(svgEl("title", {}, `${fmt(edges[i], 0)}–${fmt(edges[i + 1], 0)} tokens: ${c}`));
    svg.append(bar);
  });
  svg.append(svgEl("text", { x: 0, y: 116 }, `${fmt(edges[0], 0)}`), svgEl("text", { x: 1200, y: 116, "text-anchor": "end" }, `${fmt(edges[edges.length - 1], 0)} tokens`));
  return svg;
}

function uploadButton(file, enabled) {
  return el("button", { type: "button", id: "upload", disabled: !enabled, onclick: guarded(async () => {
    const form = new FormData();
    form.append("file", file);
    form.append("purpose", "fine-tune");
    const row = await api("/v1/files", { method: "POST", body: form });
    say(`Uploaded ${row.filename} as ${row.id}.`);
    await loadFiles();
  }) }, enabled ? `Upload ${file.name}` : "Upload (fix the problems first)");
}

async function loadFiles() {
  state.files = (await api("/v1/files?purpose=fine-tune")).data;
  $("#files-table tbody").replaceChildren(...state.files.map((f) => el("tr", {},
    el("td", { text: f.filename }), el("td", {}, el("code", { text: f.id })), el("td", { text: f.bytes }), el("td", { text: when(f.created_at) }))));
}

// ---- Plan and launch --------------------------------------------------------------------------------------
function wirePlan() {
  $("#plan-form").addEventListener("submit", guarded(advise));
  $("#launch-form").addEventListener("submit", guarded(launch));
}
async function loadPlan() {
  await loadFiles();
  state.models = (await api("/v1/models")).data;   // tuned models appear as jobs finish
  options($("#plan-file"), state.files, (f) => `${f.filename} (${f.id})`, (f) => f.id);
  options($("#plan-validation"), state.files, (f) => `${f.filename} (${f.id})`, (f) => f.id, "(hold out from training)");
  options($("#plan-model"), state.models, (m) => m.id, (m) => m.id);
}
async function advise(event) {
  event.preventDefault();
  const out = $("#plan-advice");
  out.replaceChildren(el("p", { text: "Reading the data and planning…" }));
  const a = await api(`/v1/hone/files/${encodeURIComponent($("#plan-file").value)}/advice?model=${encodeURIComponent($("#plan-model").value)}`);
  const r = a.advice, rows = ["objective", "method", "lr", "epochs", "batch_size", "max_length"].map((k) => [k, r[k], r.reasons[k] || ""]);
  rows.push(["time", r.seconds ? `${fmt(r.seconds, 0)} s` : "–", r.reasons.time || ""]);
  const plan = a.plan.methods.map((m) => [m.method, m.trainable.toLocaleString(), gb(m.total),
    m.seconds_per_epoch ? `${fmt(m.seconds_per_epoch, 0)} s` : "–", m.refused || (m.fits ? "yes" : "no")]);
  out.replaceChildren(el("h3", { text: `Advised recipe for ${r.data} (${r.n_examples} examples, ${r.shape})` }),
    table(["setting", "value", "why"], rows),
    el("p", { class: "note", text: `method: ${a.fields.method}. The server sets it for every job; the settings below are the job's.` }),
    el("h3", { text: `Memory and time on ${a.plan.device || "this machine"}` }),
    table(["method", "trainable parameters", "memory", "per epoch", "fits"], plan),
    el("p", { class: "note", text: a.plan.speed_note }));
  for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) $(`#hp-${name}`).title = a.fields[name];
  for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) {
    const label = document.querySelector(`label[for=hp-${name}]`);
    label.replaceChildren(name, el("small", { text: a.fields[name] }));
  }
  $("#hp-n_epochs").value = Math.max(1, Math.round(r.epochs));
  $("#hp-batch_size").value = r.batch_size;
  $("#hp-learning_rate_multiplier").value = +(r.lr / a.default_lr).toPrecision(3);   // the advised rate, as the API takes it
}
const gb = (bytes) => (typeof bytes === "number" ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : "–");
async function launch(event) {
  event.preventDefault();
  const type = $("#launch-type").value, hp = {};
  for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) {
    const raw = $(`#hp-${name}`).value.trim();
    hp[name] = raw === "" || raw === "auto" ? "auto" : Number(raw);
  }
  const body = { model: $("#plan-model").value, training_file: $("#plan-file").value,
    method: { type, [type]: { hyperparameters: hp } } };
  if ($("#plan-validation").value) body.validation_file = $("#plan-validation").value;
  if ($("#launch-suffix").value.trim()) body.suffix = $("#launch-suffix").value.trim();
  const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
  say(`Launched ${job.id}.`);
  state.watching = job.id;
  await showTab("watch");
}

// ---- Watch ------------------------------------------------------------------------------------------------
function wireWatch() {
  $("#watch-job").addEventListener("change", guarded(() => follow($("#watch-job").value)));
  for (const action of ["pause", "resume", "cancel"]) {
    $(`#job-${action}`).addEventListener("click", guarded(async () => {
      const job = await api(`/v1/fine_tuning/jobs/${state.watching}/${action}`, { method: "POST" });
      say(`Job ${job.id}: ${job.status}.`);
      summary(job);
      if (action === "resume") await follow(job.id);
    }));
  }
}
async function loadJobs() {
  state.jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
  options($("#watch-job"), state.jobs, (j) => `${j.id} · ${j.model} · ${j.status}`, (j) => j.id);
  const id = state.watching || (state.jobs[0] && state.jobs[0].id);
  if (id) { $("#watch-job").value = id; await follow(id); }
}
function summary(job) {
  state.job = job;
  const hp = job.method && job.method[job.method.type] ? job.method[job.method.type].hyperparameters : {};
  const last = state.points[state.points.length - 1] || {};
  const cards = [["status", job.status], ["model", job.fine_tuned_model || job.model], ["step", last.step ?? "–"],
    ["learning rate", last.learning_rate !== undefined ? last.learning_rate.toExponential(2) : "–"],
    ["tokens/s", last.tokens_per_s ?? "–"], ["ETA", job.estimated_finish ? `${Math.max(0, Math.round(job.estimated_finish - Date.now() / 1000))} s (${when(job.estimated_finish)})` : "–"],
    ["epochs", hp.n_epochs ?? "–"], ["batch", hp.batch_size ?? "–"]];
  $("#job-summary").replaceChildren(...cards.map(([k, v]) => el("div", { class: "card", "data-card": k }, el("span", { text: k }), el("strong", { text: fmt(v) }))));
  $("#job-pause").disabled = !["validating_files", "queued", "running"].includes(job.status);
  $("#job-cancel").disabled = !["validating_files", "queued", "running", "paused"].includes(job.status);
  $("#job-resume").disabled = job.status !== "paused";
  if (job.error) say(`Job ${job.id} failed: ${job.error.message}`, true);
}
async function follow(jobId) {
  if (state.stream) state.stream.abort();
  state.watching = jobId;
  state.points = [];
  $("#events").replaceChildren();
  drawLoss();
  summary(await api(`/v1/fine_tuning/jobs/${jobId}`));
  await loadCheckpoints(jobId);
  if (!has("/v1/hone/fine_tuning/jobs/{job_id}/stream")) return;
  const controller = new AbortController();
  state.stream = controller;
  readStream(jobId, controller).catch((err) => { if (err.name !== "AbortError") say(`Event stream: ${err.message}`, true); });
}
async function readStream(jobId, controller) {
  await readEvents(`/v1/hone/fine_tuning/jobs/${jobId}/stream`, { signal: controller.signal }, (kind, data) => {
    if (data && state.watching === jobId) onFrame(kind, JSON.parse(data));
  });
  if (state.watching === jobId) await loadCheckpoints(jobId);
}
function onFrame(kind, data) {
  if (kind === "job") {
    summary(data);
    const option = [...$("#watch-job").options].find((o) => o.value === data.id);
    if (option) option.textContent = `${data.id} · ${data.model} · ${data.status}`;
    return;
  }
  const item = el("li", { class: data.level, text: `${when(data.created_at)}  ${data.message}` });
  $("#events").prepend(item);
  if (data.type === "metrics") {
    state.points.push(data.data);
    drawLoss();
    summary(state.job);
  }
}
async function loadCheckpoints(jobId) {
  const rows = (await api(`/v1/fine_tuning/jobs/${jobId}/checkpoints`)).data;
  $("#checkpoints tbody").replaceChildren(...rows.map((c) => el("tr", {},
    el("td", { text: c.step_number }), el("td", { text: fmt(c.metrics.train_loss) }), el("td", { text: fmt(c.metrics.valid_loss) }),
    el("td", {}, el("code", { text: c.fine_tuned_model_checkpoint })))));
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function drawLoss() {
  const svg = $("#loss-chart"), pts = state.points, W = 1000, H = 260, L = 56, B = 24;
  svg.replaceChildren();
  const values = pts.flatMap((p) => [p.train_loss, p.valid_loss]).filter((x) => typeof x === "number");
  if (!values.length) { svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no steps yet")); return; }
  const steps = pts.map((p) => p.step), x0 = Math.min(...steps), x1 = Math.max(x0 + 1, ...steps);
  let y0 = Math.min(...values), y1 = Math.max(...values);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const x = (s) => L + ((s - x0) / (x1 - x0)) * (W - L - 8), y = (v) => 8 + (1 - (v - y0) / (y1 - y0)) * (H - B - 16);
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - 8, y2: H - B, class: "axis" }), svgEl("line", { x1: L, y1: 8, x2: L, y2: H - B, class: "axis" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) svg.append(svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 2)));
  svg.append(svgEl("text", { x: L, y: H - 6 }, `step ${x0}`), svgEl("text", { x: W - 8, y: H - 6, "text-anchor": "end" }, `step ${x1}`));
  for (const [key, cls] of [["train_loss", "train"], ["valid_loss", "valid"]]) {
    const line = pts.filter((p) => typeof p[key] === "number");
    if (!line.length) continue;
    svg.append(svgEl("polyline", { class: `series ${cls}`, points: line.map((p) => `${x(p.step)},${y(p[key])}`).join(" ") }));
    for (const p of line) svg.append(svgEl("circle", { class: `dot ${cls}`, cx: x(p.step), cy: y(p[key]), r: 3 }));
  }
  svg.dataset.points = String(pts.length);
}

// ---- Compare ----------------------------------------------------------------------------------------------
function wireCompare() {
  $("#compare-form").addEventListener("submit", guarded(evaluate));
  $("#chat-form").addEventListener("submit", guarded(chatBoth));
  $("#compare-job").addEventListener("change", namePanes);
  $("#forgetting-button").addEventListener("click", guarded(probe));
  $("#rate-good").addEventListener("click", () => rate("good"));
  $("#rate-bad").addEventListener("click", () => rate("bad"));
  $("#feedback-form").addEventListener("submit", guarded(sendFeedback));
}
async function probe() {
  const p = pair(), out = $("#forgetting-result");
  if (!p) { say("No succeeded job yet.", true); return; }
  out.replaceChildren(el("p", { text: "Scoring general-skills questions on base and tuned…" }));
  const f = await api(`/v1/hone/fine_tuning/jobs/${p.job.id}/forgetting`, { method: "POST" });
  out.replaceChildren(el("h3", { text: `Forgetting probe: ${f.n} general-skills questions` }),
    table(["base %", "tuned %", "drop (points)", "95% interval of the drop", "gate", "verdict", "lost / gained"],
      [[f.base, f.tuned, f.drop, `[${f.ci[0]}, ${f.ci[1]}]`, `≤ ${f.gate}`, f.passed ? "within" : "over", `${f.lost} / ${f.gained}`]]),
    table(["category", "questions", "base %", "tuned %"], Object.entries(f.categories).map(([name, c]) => [name, c.n, c.base, c.tuned])));
  say("Probed.");
}
async function loadCompare() {
  state.jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
  const done = state.jobs.filter((j) => j.status === "succeeded" && j.fine_tuned_model);
  options($("#compare-job"), done, (j) => `${j.fine_tuned_model} (base ${j.model})`, (j) => j.id);
  namePanes();
}
function pair() {
  const job = state.jobs.find((j) => j.id === $("#compare-job").value);
  return job ? { base: job.model, tuned: job.fine_tuned_model, job } : null;
}
function namePanes() {
  const p = pair();
  $("#chat-base-name").textContent = p ? `base: ${p.base}` : "base";
  $("#chat-tuned-name").textContent = p ? `tuned: ${p.tuned}` : "tuned (finish a job first)";
}
async function chatBoth(event) {
  event.preventDefault();
  const p = pair();
  if (!p) { say("No succeeded job yet: a tuned model comes from one.", true); return; }
  const messages = [{ role: "user", content: $("#chat-input").value }];
  $("#feedback-form").hidden = true;
  await Promise.all([streamChat(p.base, messages, $("#chat-base")), streamChat(p.tuned, messages, $("#chat-tuned"))]);
  say("Both answered.");
  // only a captured answer can be rated (hone serve --capture)
  if (await capturing() && $("#chat-tuned").dataset.id) {
    state.rating = null;
    for (const b of ["#rate-good", "#rate-bad"]) $(b).setAttribute("aria-pressed", "false");
    $("#feedback-correction").value = "";
    $("#feedback-form").hidden = false;
  }
}
// temperature 0: greedy, so the side-by-side answers are reproducible and differ only by the model
async function streamChat(model, messages, box) {
  box.textContent = "";
  delete box.dataset.id;
  delete box.dataset.done;
  box.classList.add("streaming");
  const body = { model, messages, stream: true, max_tokens: 64, temperature: 0 };
  await readEvents("/v1/chat/completions", { method: "POST", body }, (kind, data) => {
    if (!data.startsWith("{")) return;   // the closing [DONE]
    const chunk = JSON.parse(data);
    if (chunk.id) box.dataset.id = chunk.id;   // the completion's id: what POST /v1/feedback rates
    box.textContent += (chunk.choices[0] && chunk.choices[0].delta.content) || "";
  });
  box.classList.remove("streaming");
  box.dataset.done = "1";
}
async function evaluate(event) {
  event.preventDefault();
  const p = pair(), out = $("#eval-result");
  if (!p) { say("No succeeded job yet.", true); return; }
  out.replaceChildren(el("p", { text: "Generating answers with base and tuned…" }));
  const r = await api(`/v1/hone/fine_tuning/jobs/${p.job.id}/evaluation`, { method: "POST", body: { limit: 12 } });
  const metrics = r.metrics.map((m) => [m.name, m.base, m.tuned, m.difference,
    m.interval ? `[${fmt(m.interval[0], 3)}, ${fmt(m.interval[1], 3)}]` : "–", `${m.improved} / ${m.regressed} / ${m.unchanged}`]);
  const scores = (r.per_item && r.per_item[r.primary]) || { tuned: [], base: null };
  const outcome = (i) => (!scores.base ? "–" : scores.tuned[i] > scores.base[i] ? "improved" : scores.tuned[i] < scores.base[i] ? "regressed" : "unchanged");
  const items = r.prompts.map((prompt, i) => [outcome(i), prompt, r.references[i], r.base_answers ? r.base_answers[i] : "–", r.tuned_answers[i]]);
  const filter = el("select", { id: "item-filter", "aria-label": "show items" },
    ["all", "improved", "regressed", "unchanged"].map((o) => el("option", { value: o, text: o })));
  const itemTable = table(["outcome", "prompt", "reference", "base answer", "tuned answer"], items);
  itemTable.id = "items";
  filter.addEventListener("change", () => {
    for (const row of itemTable.tBodies[0].rows) row.hidden = filter.value !== "all" && row.cells[0].textContent !== filter.value;
  });
  out.replaceChildren(el("h3", { text: `${r.base_model} against ${r.model} on ${r.n} held-out items (primary metric: ${r.primary})` }),
    table(["metric", "base", "tuned", "tuned − base", "95% interval of the difference", "items improved / regressed / unchanged"], metrics),
    el("h3", {}, "Per item ", filter), itemTable);
  say(`Evaluated in ${r.seconds} s.`);
}

async function capturing() {
  if (!has("/v1/feedback") || !has("/v1/hone/traffic")) return false;
  if (state.capture === undefined) state.capture = (await api("/v1/hone/traffic")).capture;
  return state.capture;
}
function rate(rating) {
  state.rating = rating;
  $("#rate-good").setAttribute("aria-pressed", String(rating === "good"));
  $("#rate-bad").setAttribute("aria-pressed", String(rating === "bad"));
}
async function sendFeedback(event) {
  event.preventDefault();
  if (!state.rating) { say("Choose Good or Bad first.", true); return; }
  const body = { id: $("#chat-tuned").dataset.id, rating: state.rating };
  const correction = $("#feedback-correction").value.trim();
  if (correction) body.correction = correction;
  const f = await api("/v1/feedback", { method: "POST", body });
  say(`Rated ${f.id} ${f.rating}${f.correction ? ", with a correction" : ""}.`);
}

// ---- Registry ---------------------------------------------------------------------------------------------
function wireRegistry() {
  $("#diff-button").addEventListener("click", guarded(diffRuns));
}
async function loadRuns() {
  const runs = (await api("/v1/hone/runs")).data, byId = Object.fromEntries(runs.map((r) => [r.id, r]));
  if (has("/v1/hone/runs/{run_id}/exports") && !state.formats) state.formats = (await api("/v1/hone/export_formats")).data;
  // A run's parent: the registry's parent_id, or the run whose tuned model its job trained on.
  const parent = (r) => byId[r.parent_id] || runs.find((x) => x.job.fine_tuned_model && x.job.fine_tuned_model === r.job.model);
  const lineage = (r) => {
    const chain = [];
    for (let p = parent(r); p && !chain.includes(p.ref); p = parent(p)) chain.push(p.ref);
    return chain.length ? `${chain.join(" ← ")} ← ${runs.find((x) => x.ref === chain[chain.length - 1]).job.model}` : r.job.model;
  };
  $("#runs-table tbody").replaceChildren(...runs.map((r) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", class: "pick", value: r.id, "aria-label": `select ${r.ref} for diff` })),
    el("td", { class: "wrap" }, el("strong", { text: r.ref }), el("br"), el("small", { text: r.job.fine_tuned_model || r.job.id })),
    // a job cancelled after its last step keeps a finished run but no tuned model: both statuses are shown
    el("td", { text: r.job.status === r.status ? r.status : `${r.status} (job ${r.job.status})` }), el("td", { class: "wrap", text: r.job.model }), el("td", { text: `${r.method || "–"} / ${r.objective || "–"}` }),
    el("td", { class: "lineage wrap", text: lineage(r) }), el("td", { class: "tags", text: r.tags.join(", ") || "–" }),
    el("td", {}, el("button", { type: "button", text: r.tags.includes("production") ? "In production" : "Promote to production",
      class: "promote", disabled: r.tags.includes("production"), onclick: guarded(() => promoteRun(r, false)) }), exportControl(r)))));
  if (!runs.length) $("#runs-table tbody").append(el("tr", {}, el("td", { colspan: 8, text: "No runs yet: launch a job." })));
}
// Promotion goes through hone promote's gate (POST /v1/hone/runs/{id}/promotion); a bare tag move only for the
// org's first production run, and a force that names the failed conditions it overrides.
async function promoteRun(run, force) {
  const out = $("#promotion-result");
  if (!has("/v1/hone/runs/{run_id}/promotion")) {
    await api(`/v1/hone/runs/${encodeURIComponent(run.id)}/tags`, { method: "POST", body: { tag: "production" } });
    say(`${run.ref} is now production.`);
    await loadRuns();
    return;
  }
  out.replaceChildren(el("p", { text: `Weighing ${run.ref} against production: both models answer the original held-out examples and the new slice…` }));
  const p = await api(`/v1/hone/runs/${encodeURIComponent(run.id)}/promotion`, { method: "POST", body: { tag: "production", force } });
  const rule = { original_test: "not worse (interval not wholly below 0)", new_slice: "better (interval wholly above 0)", forgetting: "drop within the gate" };
  const verdict = p.first ? "promoted (first production run)" : p.forced ? "promoted by force" : p.promoted ? "promoted" : "not promoted";
  const parts = [el("h3", { id: "promotion-verdict", text: `${p.candidate} over ${p.champion || "nothing"}: ${verdict}` })];
  if (p.note) parts.push(el("p", { class: p.forced ? "bad" : "note", text: p.note }));
  if (p.conditions.length) {
    parts.push(table(["condition", "needs", "result", "figures"], p.conditions.map((c) =>
      [c.name.replace("_", " "), rule[c.name] || "", c.passed === null ? "not measured" : c.passed ? "holds" : "fails", c.line])));
  }
  if (!p.promoted) {
    parts.push(el("p", { class: "bad", text: `Why not: ${p.reasons.join("; ")}` }),
      el("button", { type: "button", id: "force-promote", class: "danger", onclick: guarded(() => promoteRun(run, true)),
        text: `Force: make ${run.ref} production although ${p.reasons.length} condition${p.reasons.length === 1 ? "" : "s"} failed (recorded as forced)` }));
  }
  out.replaceChildren(...parts);
  say(p.promoted ? `${run.ref} is now production.` : `${run.ref} was not promoted.`);
  await loadRuns();
}
// One choice per format and quant (those whose tool is missing here are listed, disabled, with the reason).
function exportControl(run) {
  if (!state.formats) return null;
  const select = el("select", { class: "export-format", "aria-label": `export format for ${run.ref}` },
    state.formats.flatMap((f) => f.quants.map((q) => el("option", { value: `${f.name}/${q.name}`, disabled: !!q.unavailable,
      title: q.unavailable || f.what, text: `${f.name} ${q.name}` }))));
  const button = el("button", { type: "button", class: "export", text: "Export", onclick: guarded(async () => {
    const [format, quant] = select.value.split("/");
    $("#export-result").replaceChildren(el("p", { text: `Exporting ${run.ref} as ${format} ${quant} and checking it against the run's model…` }));
    const m = await api(`/v1/hone/runs/${encodeURIComponent(run.id)}/exports`, { method: "POST", body: { format, quant, force: true } });
    showExport(run, m);
  }) });
  return el("div", { class: "export-control" }, select, button);
}
function showExport(run, m) {
  const v = m.verification, items = v.items || [];
  const cols = items.length ? Object.keys(items[0]).filter((k) => typeof items[0][k] !== "object") : [];
  $("#export-result").replaceChildren(
    el("h3", { text: `${run.ref} as ${m.format} ${m.quant} (${m.runtime}): ${v.passed ? "verified" : "rejected"}` }),
    table(["check", "result", "allowed"], [["max |Δlogit| against the run's model", v.max_logit_delta, `≤ ${v.tolerance}`],
      ["same greedy answer", `${v.greedy_agree} of ${v.prompts} prompts`, `≥ ${v.greedy_needed}`],
      ...Object.entries(v.checks).map(([k, x]) => [k, typeof x === "string" ? x : JSON.stringify(x), "same"])]),
    items.length ? table(cols, items.map((i) => cols.map((c) => i[c]))) : null,
    table(["file", "bytes", "sha256"], m.files.map((f) => [f.path, f.bytes, f.sha256.slice(0, 16) + "…"])));
  say(`Exported ${run.ref} as ${m.format} ${m.quant} in ${m.seconds.total} s.`);
}
async function diffRuns() {
  const picked = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
  if (picked.length !== 2) { say("Select exactly two runs to diff.", true); return; }
  const d = await api(`/v1/hone/runs/diff?a=${encodeURIComponent(picked[0])}&b=${encodeURIComponent(picked[1])}`);
  const rows = Object.entries(d).flatMap(([section, items]) => items.map((i) => [section, i.key, JSON.stringify(i.a), JSON.stringify(i.b)]));
  $("#diff-result").replaceChildren(table(["section", "field", picked[0], picked[1]], rows.length ? rows : [["–", "no differences", "", ""]]));
}

// ---- Production -------------------------------------------------------------------------------------------
function wireProduction() {
  $("#monitor-form").addEventListener("submit", guarded(monitor));
}
async function loadProduction() {
  const t = await api("/v1/hone/traffic");
  state.capture = t.capture;
  $("#capture-note").textContent = t.capture
    ? "This server captures answers (hone serve --capture): their health and drift are below, and they can be rated."
    : "This server does not capture answers (start it with hone serve --capture): nothing new is recorded to monitor or rate.";
  options($("#monitor-model"), t.data, (m) => `${m.model} (${m.requests} requests)`, (m) => m.model);
  if (!t.data.length) $("#monitor-result").replaceChildren(el("p", { text: "No captured traffic of this org yet." }));
}
async function monitor(event) {
  event.preventDefault();
  const out = $("#monitor-result"), model = $("#monitor-model").value, since = $("#monitor-since").value.trim();
  if (!model) { say("No model with captured traffic yet.", true); return; }
  out.replaceChildren(el("p", { text: `Reading ${model}'s traffic and comparing its inputs with the training data…` }));
  const r = await api(`/v1/hone/monitor?model=${encodeURIComponent(model)}${since ? `&since=${encodeURIComponent(since)}` : ""}`);
  const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
  const d = r.drift || {};
  const parts = [el("h3", { text: `${r.model}: ${r.requests} requests${r.since ? ` since ${new Date(r.since * 1000).toLocaleString()}` : ""}` }),
    el("h4", { text: `Alarms (${r.alarms.length})` }),
    r.alarms.length ? el("ul", { id: "alarms", class: "bad" }, r.alarms.map((a) => el("li", { text: `${a.name}: ${a.message}` })))
      : el("p", { id: "alarms", class: "good", text: "No alarm." }),
    el("h4", { text: "Health by day (UTC)" }),
    table(["day", "requests", "latency p50 ms", "p95 ms", "answer tokens", "empty", "refusals", "cut at max_tokens", "rated", "bad", "corrections"],
      r.days.map((x) => [x.day, x.requests, x.latency_p50_ms, x.latency_p95_ms, x.answer_tokens_mean, pct(x.empty_rate), pct(x.refusal_rate),
        pct(x.never_stops_rate), x.rated, pct(x.bad_share), x.corrections])),
    el("h4", { text: "Input drift against the training data" }),
    el("p", { id: "drift", class: d.drifted ? "bad" : "note", text: d.skipped ? `Not measured: ${d.skipped}.`
      : `MMD p-value ${fmt(d.p_value)} (${d.inputs} inputs against ${d.training_examples} training examples of ${r.training_data}, ${d.encoder}): ${d.drifted ? "the inputs have drifted" : "no drift shown"}.` })];
  if (r.outliers.length) {
    parts.push(el("h4", { text: "The inputs furthest from the training data" }),
      table(["input", "similarity to its nearest training example", "nearest training example"], r.outliers.map((o) => [o.input, o.similarity, o.nearest])));
  }
  parts.push(el("h4", { text: `Feedback (${r.feedback.length})` }),
    r.feedback.length ? table(["when", "prompt", "answer", "rating", "correction"], r.feedback.map((f) => [when(f.created_at),
      (f.messages.filter((m) => m.role === "user" || m.role === "prompt").pop() || {}).content || "–", f.answer, f.rating, f.correction || "–"]))
      : el("p", { text: "No rated answers yet." }));
  parts[parts.length - 1].id = "feedback-list";
  out.replaceChildren(...parts);
  say(`Monitored ${r.model}.`);
}

document.addEventListener("DOMContentLoaded", () => guarded(start)());

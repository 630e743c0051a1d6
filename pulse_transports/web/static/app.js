// PULSE web view: the page's logic. No build step, no framework.
//
// It reads /events (server-sent events; every message is a JSON array of items:
// events, and hello/snapshot/live/liveness/resync objects), folds the events into
// one model per run (the reducer's rules: seq order, a terminal status is final,
// only legal status moves), and renders the runs. /api/runs lists finished runs
// too; /api/runs/{id} and /api/runs/{id}/metrics fill in a run when it is chosen.
// The Flows History page (#flows, #flows=<flow_run_id>) reads /api/flows and
// /api/flows/{flow_run_id}; a run's attempt opens in the run view (#run=<id>).
//
// Everything that comes from a run -- ids, names, messages, error details, metric
// names -- is untrusted text: it is only ever put in the page with textContent or
// setAttribute, never parsed as HTML -- and through shown(), which writes bidi controls
// (right-to-left override and friends) as visible <U+202E> marks, so a run's text
// cannot reverse or reorder what the page shows around it.
"use strict";

(function () {
  const TERMINAL = new Set(["done", "error", "cancelled"]);
  const NAMED_METRICS = ["loss", "time_per_epoch", "samples_per_second", "tokens_per_second"];
  const MAX_POINTS = 1000;
  const MAX_FINISHED = 20;
  const RECONNECT_MS = 1000;
  const FLOWS_REFRESH_MS = 2000;
  const MAX_CURVES = 8;
  // Ids PULSE makes: 20261206-164652-530-7fcf03b5c4 (the random part tells them apart).
  const GENERATED_ID = /^\d{8}-\d{6}-\d{3}-([0-9a-f]{6,})$/;

  const runs = new Map(); // training_id -> model
  const cards = new Map(); // training_id -> card elements
  const stats = { messages: 0, events: 0, duplicates: 0, snapshots: 0, connects: 0, errors: 0 };
  let transitions = null; // status -> allowed targets (from the hello)
  let selected = null;
  let userChose = false;
  let pickedFinished = false; // the automatic choice fell on a finished run
  let flowFilter = null;
  let cursor = "";
  let source = null;
  let reconnectTimer = null;
  let chartPending = false;
  let skew = 0; // server clock minus this browser's, seconds
  let page = "runs";
  let flowRunChosen = null; // the flow run shown on the Flows History page
  let flowList = [];
  let flowListKey = "";
  let flowRunKey = "";
  let flowTimer = null;

  const $ = (id) => document.getElementById(id);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const now = () => Date.now() / 1000 + skew;

  // -- the model --------------------------------------------------------------

  function blank(tid) {
    return {
      training_id: tid, name: null, status: "idle", message: "", liveness: "alive",
      epoch: null, total_epochs: null, step: null, total_steps: null,
      metrics: {}, errors: [], error_count: 0, flow: null, timeline: [],
      last_seq: 0, created_at: null, started_at: null, finished_at: null, last_event_at: null,
      degraded: false, held: false, complete: false, loss: [], band: [], historyFor: null,
      curves: {},
    };
  }

  function fromView(view, old) {
    const r = blank(view.training_id);
    const p = view.progress || {};
    Object.assign(r, {
      name: view.run ? view.run.name : null,
      status: view.status, message: view.message || "", liveness: view.liveness,
      epoch: p.epoch, total_epochs: p.total_epochs, step: p.step, total_steps: p.total_steps,
      metrics: { ...(view.metrics || {}) },
      errors: (view.errors || []).slice(), error_count: view.error_count || 0,
      flow: view.flow, timeline: (view.timeline || []).slice(),
      last_seq: view.stats ? view.stats.last_seq : 0,
      created_at: view.timings ? view.timings.created_at : null,
      started_at: view.timings ? view.timings.started_at : null,
      finished_at: view.timings ? view.timings.finished_at : null,
      last_event_at: view.timings ? view.timings.last_event_at : null,
      degraded: !!view.degraded, complete: true,
    });
    if (old) {
      r.held = old.held;
      r.curves = old.curves;
      r.loss = old.loss;
      r.band = old.band;
      r.historyFor = old.historyFor;
    }
    return r;
  }

  function fromSummary(row, old) {
    if (old && (old.held || old.complete)) return old; // the stream or a view knows more
    const r = blank(row.training_id);
    Object.assign(r, {
      name: row.name, status: row.status, message: row.message || "", liveness: row.liveness,
      epoch: row.epoch, total_epochs: row.total_epochs, step: row.step,
      total_steps: row.total_steps, error_count: row.error_count || 0, flow: row.flow,
      created_at: row.created_at, started_at: row.started_at, finished_at: row.finished_at,
      last_event_at: row.last_event_at,
    });
    if (isNum(row.loss)) r.metrics.loss = row.loss;
    if (row.error) r.errors = [{ ...row.error, details: null, seq: null }];
    if (old) {
      r.loss = old.loss; r.band = old.band; r.historyFor = old.historyFor; r.curves = old.curves;
    }
    return r;
  }

  function allowed(from, to) {
    if (!transitions) return !TERMINAL.has(from);
    const targets = transitions[from];
    return Array.isArray(targets) && targets.includes(to);
  }

  // Apply one event the way the reducer does; returns false if it changed nothing.
  function apply(e) {
    let r = runs.get(e.training_id);
    if (!r) {
      r = blank(e.training_id);
      r.held = true;
      runs.set(e.training_id, r);
    }
    if (e.seq <= r.last_seq) { stats.duplicates += 1; return false; }
    stats.events += 1;
    r.last_seq = e.seq;
    if (r.created_at === null) r.created_at = e.timestamp;
    if (r.last_event_at === null || e.timestamp > r.last_event_at) r.last_event_at = e.timestamp;
    if (e.type === "dropped") { r.degraded = true; return true; }
    if (TERMINAL.has(r.status) && e.type !== "heartbeat") return true;
    switch (e.type) {
      case "meta":
        r.name = e.name ?? r.name;
        if (e.flow_id || e.flow_run_id || e.flow_step_id) {
          r.flow = { flow_id: e.flow_id ?? null, flow_run_id: e.flow_run_id ?? null,
                     flow_step_id: e.flow_step_id ?? null, attempt: e.attempt ?? null };
        }
        if (isNum(e.total_epochs) && r.total_epochs === null) r.total_epochs = e.total_epochs;
        if (isNum(e.total_steps) && r.total_steps === null) r.total_steps = e.total_steps;
        break;
      case "status":
        if (!allowed(r.status, e.status)) break;
        r.message = e.message || "";
        if (r.started_at === null && (e.status === "preparing" || e.status === "running")) {
          r.started_at = e.timestamp;
        }
        r.timeline.push({ status: e.status, message: r.message, timestamp: e.timestamp, seq: e.seq });
        if (r.timeline.length > 64) r.timeline.splice(8, 1);
        r.status = e.status;
        if (TERMINAL.has(e.status)) { r.finished_at = e.timestamp; r.liveness = "ended"; }
        break;
      case "progress":
        for (const k of ["epoch", "total_epochs", "step", "total_steps"]) {
          if (isNum(e[k])) r[k] = e[k];
        }
        break;
      case "metrics": {
        for (const k of NAMED_METRICS) if (isNum(e[k])) r.metrics[k] = e[k];
        for (const [k, v] of Object.entries(e.extra || {})) if (isNum(v)) r.metrics[k] = v;
        if (isNum(e.loss)) {
          r.loss.push([e.timestamp, e.loss]);
          if (r.loss.length > MAX_POINTS) r.loss.splice(0, r.loss.length - MAX_POINTS);
        }
        const sent = Object.entries(e.extra || {});
        for (const k of NAMED_METRICS) if (k !== "loss") sent.push([k, e[k]]);
        for (const [k, v] of sent) {
          if (!isNum(v)) continue;
          const curve = r.curves[k] || (r.curves[k] = []);
          curve.push([e.timestamp, v]);
          if (curve.length > MAX_POINTS) curve.splice(0, curve.length - MAX_POINTS);
        }
        break;
      }
      case "error":
        r.errors.push({
          error_code: e.error_code, message: e.message, is_retryable: !!e.is_retryable,
          details: e.details ?? null, epoch: e.epoch ?? null, step: e.step ?? null,
          timestamp: e.timestamp, seq: e.seq,
        });
        if (r.errors.length > 32) r.errors.splice(8, 1);
        r.error_count += 1;
        break;
      default: // heartbeat, and types this page does not know
        break;
    }
    return true;
  }

  // The documented formula: (epoch - 1 + step / total_steps) / total_epochs; done is 1.
  function fraction(r) {
    if (r.status === "done") return 1;
    let within = null;
    if (isNum(r.step) && isNum(r.total_steps) && r.total_steps > 0) {
      within = Math.min(Math.max(r.step / r.total_steps, 0), 1);
    }
    if (isNum(r.total_epochs) && r.total_epochs > 0) {
      const done = Math.max((isNum(r.epoch) ? r.epoch : 1) - 1, 0) + (within ?? 0);
      return Math.min(done / r.total_epochs, 1);
    }
    return within;
  }

  function percentText(f) {
    if (f === null) return "progress unknown";
    return f >= 1 ? "100%" : `${Math.floor(f * 100)}%`;
  }

  function positionText(r) {
    const parts = [];
    if (isNum(r.epoch)) parts.push(`epoch ${r.epoch}${isNum(r.total_epochs) ? `/${r.total_epochs}` : ""}`);
    if (isNum(r.step)) parts.push(`step ${r.step}${isNum(r.total_steps) ? `/${r.total_steps}` : ""}`);
    return parts.join(" · ");
  }

  function livenessText(r) {
    return TERMINAL.has(r.status) ? "ended" : (r.liveness || "alive");
  }

  // Active runs are the alive and stale ones: a lost run is listed with the
  // finished ones, shown as lost with its last known status, never "running".
  function isActive(r) { return r.held && !TERMINAL.has(r.status) && livenessText(r) !== "lost"; }

  function statusText(r) {
    return livenessText(r) === "lost" ? `lost — last seen ${r.status}` : r.status;
  }

  function statusClass(r) {
    return livenessText(r) === "lost" ? "status-lost" : `status-${r.status}`;
  }

  function fmtTime(t) {
    if (!isNum(t)) return "";
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  // A start time: the time of day today, else the date too.
  function fmtStart(t) {
    if (!isNum(t)) return "";
    const d = new Date(t * 1000);
    if (d.toDateString() === new Date().toDateString()) return fmtTime(t);
    return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${fmtTime(t)}`;
  }

  // Durations as the CLI writes them: 12.3s, 3m05s, 1h02m, 2d03h.
  function fmtDuration(seconds) {
    if (!isNum(seconds) || seconds < 0) return "";
    if (seconds < 60) return `${seconds.toFixed(1)}s`;
    let minutes = Math.floor(seconds / 60);
    const secs = Math.floor(seconds % 60);
    if (minutes < 60) return `${minutes}m${String(secs).padStart(2, "0")}s`;
    const hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 48) return `${hours}h${String(minutes).padStart(2, "0")}m`;
    return `${Math.floor(hours / 24)}d${String(hours % 24).padStart(2, "0")}h`;
  }

  function shortId(tid) {
    const m = GENERATED_ID.exec(tid);
    if (m) return m[1].slice(0, 6);
    return tid.length > 14 ? `${tid.slice(0, 13)}…` : tid;
  }

  // Seconds from the start to the end (a lost run: to its last word; live: to now).
  function elapsed(r) {
    const start = isNum(r.started_at) ? r.started_at : r.created_at;
    if (!isNum(start)) return null;
    let end = now();
    if (isNum(r.finished_at) && TERMINAL.has(r.status)) end = r.finished_at;
    else if (livenessText(r) === "lost" && isNum(r.last_event_at)) end = r.last_event_at;
    return Math.max(0, end - start);
  }

  // Seconds left at the average rate since the start, as `pulse watch` says; null if unknown.
  function eta(r) {
    const f = fraction(r);
    const live = livenessText(r);
    if (!f || f >= 1 || live === "ended" || live === "lost") return null;
    const spent = elapsed(r);
    if (!spent) return null;
    return spent * (1 - f) / f;
  }

  function flowText(flow) {
    if (!flow) return "";
    const step = flow.flow_step_id ? `/${flow.flow_step_id}` : "";
    const attempt = isNum(flow.attempt) && flow.attempt > 1 ? ` #${flow.attempt}` : "";
    return `${flow.flow_id || flow.flow_run_id || "flow"}${step}${attempt}`;
  }

  // -- rendering helpers ---------------------------------------------------------

  // Bidi embeddings, overrides, isolates and marks (U+061C, 200E-200F, 202A-202E, 2066-2069).
  const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

  function shown(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return text.replace(BIDI_CONTROLS, (c) => `<U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}>`);
  }

  function setText(node, value) {
    const text = shown(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function setClass(node, base, variant) {
    const name = variant ? `${base} ${variant}` : base;
    if (node.className !== name) node.className = name;
  }

  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = shown(text);
    return node;
  }

  function setBar(fill, bar, f) {
    const width = f === null ? "0%" : `${(f * 100).toFixed(2)}%`;
    if (fill.style.width !== width) fill.style.width = width;
    bar.classList.toggle("unknown", f === null);
    if (f === null) bar.removeAttribute("aria-valuenow");
    else bar.setAttribute("aria-valuenow", String(Math.floor(f * 100)));
  }

  // -- the run lists ---------------------------------------------------------------

  function card(tid) {
    let c = cards.get(tid);
    if (c) return c;
    const li = make("li", "run");
    li.setAttribute("data-training-id", tid);
    li.tabIndex = 0;
    const head = make("div", "run-head");
    const name = make("span", "run-name");
    const status = make("span", "badge");
    status.setAttribute("data-role", "status");
    const liveness = make("span", "badge");
    liveness.setAttribute("data-role", "liveness");
    head.append(name, status, liveness);
    const bar = make("div", "bar");
    const fill = make("div", "fill");
    bar.appendChild(fill);
    const foot = make("div", "run-foot");
    const percent = make("span", "percent");
    percent.setAttribute("data-role", "percent");
    const position = make("span", "position");
    position.setAttribute("data-role", "position");
    foot.append(percent, position);
    const prog = make("div", "progress");
    prog.append(bar, foot);
    const meta = make("div", "run-meta");
    const short = make("code", "short-id");
    short.setAttribute("data-role", "short-id");
    const started = make("span", "started");
    started.setAttribute("data-role", "started");
    const duration = make("span", "duration");
    duration.setAttribute("data-role", "duration");
    const flow = make("span", "run-flow");
    flow.setAttribute("data-role", "flow");
    meta.append(short, started, duration, flow);
    li.append(head, prog, meta);
    li.addEventListener("click", () => choose(tid, true));
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") choose(tid, true); });
    c = { li, name, status, liveness, bar, fill, percent, position, short, started, duration, flow };
    cards.set(tid, c);
    return c;
  }

  function renderCard(r) {
    const c = card(r.training_id);
    setText(c.name, r.name || r.training_id);
    c.name.title = shown(r.training_id);
    setText(c.status, statusText(r));
    setClass(c.status, "badge", statusClass(r));
    const live = livenessText(r);
    setText(c.liveness, live);
    setClass(c.liveness, "badge", `live-${live}`);
    const f = fraction(r);
    setBar(c.fill, c.bar, f);
    setText(c.percent, percentText(f));
    setText(c.position, positionText(r));
    renderCardTimes(r, c);
    setText(c.short, r.name ? shortId(r.training_id) : "");
    c.short.hidden = !r.name; // a run without a name already shows its id
    c.short.title = shown(r.training_id);
    setText(c.flow, flowText(r.flow));
    c.flow.hidden = !r.flow;
    if (r.flow) c.flow.title = shown([r.flow.flow_id, r.flow.flow_run_id, r.flow.flow_step_id].filter((v) => v).join(" / "));
    c.li.classList.toggle("selected", selected === r.training_id);
    c.li.classList.toggle("lost", live === "lost");
    return c;
  }

  function renderCardTimes(r, c) {
    const start = isNum(r.started_at) ? r.started_at : r.created_at;
    setText(c.started, fmtStart(start));
    c.started.hidden = !isNum(start);
    const spent = elapsed(r);
    setText(c.duration, spent === null ? "" : fmtDuration(spent));
    c.duration.hidden = spent === null;
  }

  function visible(r) {
    return !flowFilter || (r.flow && r.flow.flow_run_id === flowFilter);
  }

  function renderLists() {
    const all = Array.from(runs.values()).filter(visible);
    const active = all.filter(isActive)
      .sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
    const finished = all.filter((r) => !isActive(r))
      .sort((a, b) => (b.finished_at || b.last_event_at || 0) - (a.finished_at || a.last_event_at || 0))
      .slice(0, MAX_FINISHED);
    place($("active"), active);
    place($("finished"), finished);
    $("active-empty").hidden = active.length > 0;
    $("finished-empty").hidden = finished.length > 0;
    // Until the user picks a run, show the newest active one; a run that was being
    // followed stays shown when it ends (its final state is the point).
    if (!userChose && (!selected || !runs.has(selected) || (pickedFinished && active.length))) {
      const first = active[0] || finished[0];
      if (first) {
        pickedFinished = !isActive(first);
        if (first.training_id !== selected) choose(first.training_id, false);
      }
    }
  }

  function place(list, models) {
    const wanted = models.map((r) => renderCard(r).li);
    const current = Array.from(list.children);
    if (current.length === wanted.length && current.every((n, i) => n === wanted[i])) return;
    list.replaceChildren(...wanted);
  }

  // -- the chosen run ------------------------------------------------------------------

  function choose(tid, byUser) {
    if (byUser) userChose = true;
    if (selected === tid && !byUser) return;
    selected = tid;
    for (const [id, c] of cards) c.li.classList.toggle("selected", id === tid);
    if (byUser && location.hash !== `#run=${encodeURIComponent(tid)}`) {
      history.replaceState(null, "", `#run=${encodeURIComponent(tid)}`);
    }
    renderDetail();
  }

  // Fetch what the lists and the stream do not carry: the full view, the loss history.
  function ensureLoaded(tid) {
    const r = runs.get(tid);
    if (!r) return;
    if (!r.complete && !r.held && !r.viewLoading) loadView(tid);
    if (r.historyFor !== tid && !r.historyLoading) loadHistory(tid);
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: { accept: "application/json" } });
    if (response.status === 401) showUnauthorized();
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // The hub asks for a token this page's cookie does not carry (a new token, an
  // expired cookie): say what to do, instead of "reconnecting" for ever.
  function showUnauthorized() {
    setConnection("unauthorized", "needs the hub's token: open the URL pulse serve printed");
  }

  function checkToken() {
    fetch("/api/runs?limit=1", { headers: { accept: "application/json" } })
      .then((response) => { if (response.status === 401) showUnauthorized(); })
      .catch(() => {});
  }

  async function loadView(tid) {
    const asked = runs.get(tid);
    if (asked) asked.viewLoading = true;
    try {
      const view = await getJson(`/api/runs/${encodeURIComponent(tid)}`);
      const old = runs.get(tid);
      if (old && (old.held || old.complete)) return; // the stream got there first
      runs.set(tid, fromView(view, old));
      renderAll(tid);
    } catch (err) {
      stats.errors += 1;
    } finally {
      if (asked) asked.viewLoading = false;
    }
  }

  // A run asked for by its link (#run=...) that the lists do not hold: read its view.
  const missing = new Set();
  async function loadMissing(tid) {
    if (missing.has(tid)) return;
    missing.add(tid);
    try {
      const view = await getJson(`/api/runs/${encodeURIComponent(tid)}`);
      if (!runs.has(tid)) runs.set(tid, fromView(view, null));
      renderAll(tid);
    } catch (err) {
      stats.errors += 1;
      setText($("detail-empty"), `No run ${tid} on this hub.`);
    }
  }

  async function loadHistory(tid) {
    const asked = runs.get(tid);
    if (asked) asked.historyLoading = true;
    try {
      const data = await getJson(`/api/runs/${encodeURIComponent(tid)}/metrics`);
      const r = runs.get(tid);
      if (!r) return;
      for (const [name, s] of Object.entries(data.metrics || {})) {
        if (name === "loss" || !s || !Array.isArray(s.windows)) continue;
        const past = s.windows.map((w) => [w.t1, w.last]);
        const lastT = past.length ? past[past.length - 1][0] : -Infinity;
        r.curves[name] = past.concat((r.curves[name] || []).filter((p) => p[0] > lastT));
      }
      const series = data.metrics && data.metrics.loss;
      const windows = series ? series.windows : [];
      const past = windows.map((w) => [w.t1, w.last]);
      const lastT = past.length ? past[past.length - 1][0] : -Infinity;
      r.loss = past.concat(r.loss.filter((p) => p[0] > lastT));
      r.band = windows.filter((w) => w.n > 1).map((w) => [w.t0, w.t1, w.min, w.max]);
      r.historyFor = tid;
      if (selected === tid) drawChart();
    } catch (err) {
      stats.errors += 1;
    } finally {
      if (asked) asked.historyLoading = false;
    }
  }

  function renderDetail() {
    const r = selected ? runs.get(selected) : null;
    $("detail-empty").hidden = !!r;
    $("detail-body").hidden = !r;
    if (!r) {
      if (selected) loadMissing(selected);
      return;
    }
    setText($("d-name"), r.name || r.training_id);
    setText($("d-id"), r.training_id);
    $("d-id").hidden = !r.name; // without a name, the title is the id: once is enough
    setText($("d-status"), statusText(r));
    setClass($("d-status"), "badge", statusClass(r));
    const live = livenessText(r);
    setText($("d-liveness"), live);
    setClass($("d-liveness"), "badge", `live-${live}`);
    $("d-degraded").hidden = !r.degraded;
    let message = r.message;
    if (live === "lost") {
      message = `training process lost: nothing heard since ${fmtTime(r.last_event_at) || "its start"}`
        + (r.message ? ` (last message: ${r.message})` : "");
    } else if (live === "stale") {
      message = `no news since ${fmtTime(r.last_event_at)}` + (r.message ? ` · ${r.message}` : "");
    }
    setText($("d-message"), message);
    const f = fraction(r);
    setBar($("d-fill"), $("d-bar"), f);
    setText($("d-percent"), percentText(f));
    setText($("d-position"), positionText(r));
    renderTimes(r);
    renderFlow(r);
    renderMetrics(r);
    renderErrors(r);
    renderTimeline(r);
    scheduleChart();
    ensureLoaded(r.training_id);
  }

  function renderTimes(r) {
    const start = isNum(r.started_at) ? r.started_at : r.created_at;
    setText($("d-started"), isNum(start) ? `started ${fmtStart(start)}` : "not started");
    const spent = elapsed(r);
    const live = livenessText(r);
    const word = live === "ended" ? "took" : "elapsed";
    setText($("d-elapsed"), spent === null ? "" : `· ${word} ${fmtDuration(spent)}`);
    const left = eta(r);
    setText($("d-eta"), left === null ? "" : `· ETA ${fmtDuration(left)}`);
  }

  function renderFlow(r) {
    const flow = r.flow;
    $("d-flow").hidden = !flow;
    if (!flow) return;
    const link = $("d-flow-link");
    setText(link, [flow.flow_id, flow.flow_run_id].filter((v) => v).join(" / ") || "unnamed");
    link.setAttribute("href", flow.flow_run_id ? `#flow=${encodeURIComponent(flow.flow_run_id)}` : "#");
    link.title = "show the runs of this flow run";
    setText($("d-flow-step"), flow.flow_step_id || "—");
    setText($("d-flow-attempt"), isNum(flow.attempt) ? `· attempt ${flow.attempt}` : "");
    const history = $("d-flow-history");
    history.hidden = !flow.flow_run_id;
    history.setAttribute("href", flow.flow_run_id ? `#flows=${encodeURIComponent(flow.flow_run_id)}` : "#flows");
  }

  function renderMetrics(r) {
    const names = Object.keys(r.metrics).filter((k) => isNum(r.metrics[k]));
    names.sort((a, b) => {
      const ia = NAMED_METRICS.indexOf(a);
      const ib = NAMED_METRICS.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    const body = $("d-metrics").tBodies[0];
    while (body.rows.length > names.length) body.deleteRow(-1);
    names.forEach((name, i) => {
      const row = body.rows[i] || body.insertRow();
      if (row.cells.length === 0) { row.insertCell(); row.insertCell(); }
      setText(row.cells[0], name);
      setText(row.cells[1], window.PulseChart.formatValue(r.metrics[name]));
      row.cells[1].setAttribute("data-metric", name);
    });
    $("d-metrics").hidden = names.length === 0;
    $("d-metrics-empty").hidden = names.length > 0;
  }

  function renderErrors(r) {
    const list = $("d-errors");
    setText($("d-error-count"), r.error_count ? `(${r.error_count})` : "");
    const key = r.errors.map((e) => `${e.seq}:${e.error_code}`).join(",");
    $("d-errors-empty").hidden = r.errors.length > 0;
    if (list.dataset.key === key && list.dataset.run === r.training_id) return;
    list.dataset.key = key;
    list.dataset.run = r.training_id;
    const items = r.errors.slice().reverse().map((e) => {
      const li = make("li", "error");
      const head = make("div", "error-head");
      head.append(
        make("code", "error-code", e.error_code),
        make("span", e.is_retryable ? "badge retryable" : "badge not-retryable",
             e.is_retryable ? "retryable" : "not retryable"),
        make("span", "error-when", [
          isNum(e.epoch) ? `epoch ${e.epoch}` : "", isNum(e.step) ? `step ${e.step}` : "",
          fmtTime(e.timestamp),
        ].filter((v) => v).join(" · ")),
      );
      li.append(head, make("p", "error-message", e.message));
      if (e.details && typeof e.details === "object" && Object.keys(e.details).length) {
        li.appendChild(detailsList(e.details));
      }
      return li;
    });
    list.replaceChildren(...items);
  }

  // Error details as a key/value list: multi-line text (a traceback, a stderr tail)
  // pre-formatted, one line as text, anything else as indented JSON. All textContent.
  function detailsList(details) {
    const dl = make("dl", "error-details");
    dl.setAttribute("data-role", "details");
    for (const [key, value] of Object.entries(details)) {
      const dd = make("dd");
      dd.setAttribute("data-key", key);
      if (typeof value === "string" && value.includes("\n")) {
        const text = value.replace(/\n+$/, "");
        const lines = text.split("\n");
        const fold = make("details", "long-text");
        fold.open = lines.length <= 30;
        fold.append(make("summary", null, `${lines.length} lines`), make("pre", null, text));
        dd.appendChild(fold);
      } else if (typeof value === "string") {
        dd.textContent = shown(value);
      } else if (value !== null && typeof value === "object") {
        dd.appendChild(make("pre", null, JSON.stringify(value, null, 2)));
      } else {
        dd.appendChild(make("code", null, JSON.stringify(value)));
      }
      dl.append(make("dt", null, key), dd);
    }
    return dl;
  }

  function renderTimeline(r) {
    const list = $("d-timeline");
    const key = `${r.training_id}:${r.timeline.length}:${r.timeline.length ? r.timeline[r.timeline.length - 1].seq : 0}`;
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(...r.timeline.map((t) => {
      const li = make("li");
      li.append(make("span", `badge status-${t.status}`, t.status),
                make("span", "when", fmtTime(t.timestamp)),
                make("span", "what", t.message));
      return li;
    }));
  }

  function scheduleChart() {
    if (chartPending) return;
    chartPending = true;
    requestAnimationFrame(() => { chartPending = false; drawChart(); });
  }

  function drawCurves(r) {
    const box = $("d-curves");
    const names = r ? Object.keys(r.curves).filter((k) => r.curves[k].length >= 2).sort()
      .slice(0, MAX_CURVES) : [];
    $("d-curves-panel").hidden = names.length === 0;
    const figures = names.map((name) => {
      const figure = make("figure", "curve");
      figure.setAttribute("data-metric", name);
      const chart = make("div", "chart");
      figure.append(make("figcaption", null, name), chart);
      window.PulseChart.draw(chart, r.curves[name], []);
      return figure;
    });
    box.replaceChildren(...figures);
  }

  function drawChart() {
    const r = selected ? runs.get(selected) : null;
    drawCurves(r);
    const box = $("d-chart");
    const drawn = r ? window.PulseChart.draw(box, r.loss, r.band) : false;
    box.hidden = !drawn;
    const empty = $("d-chart-empty");
    empty.hidden = drawn;
    if (!drawn && r) {
      setText(empty, r.loss.length === 1
        ? `One loss value so far: ${window.PulseChart.formatValue(r.loss[0][1])}`
        : "No loss reported yet.");
    }
  }

  function renderAll(changed) {
    if (changed) for (const tid of changed instanceof Set ? changed : [changed]) {
      const r = runs.get(tid);
      if (r) renderCard(r);
    }
    renderLists();
    if (selected && (!changed || (changed instanceof Set ? changed.has(selected) : changed === selected))) {
      renderDetail();
    }
  }

  // -- the stream ----------------------------------------------------------------------

  function setConnection(state, text) {
    const badge = $("connection");
    setText(badge, text);
    setClass(badge, "badge", `conn-${state}`);
  }

  function handle(items) {
    const changed = new Set();
    let refresh = false;
    for (const item of items) {
      if (item === null || typeof item !== "object") continue;
      if (typeof item.type === "string") {
        if (apply(item)) changed.add(item.training_id);
        const r = runs.get(item.training_id);
        if (item.type === "status" && r && TERMINAL.has(r.status)) refresh = true;
      } else if (item.hello) {
        transitions = item.hello.transitions || transitions;
      } else if (item.snapshot) {
        for (const [tid, view] of Object.entries(item.snapshot)) {
          stats.snapshots += 1;
          const r = fromView(view, runs.get(tid));
          r.held = true;
          runs.set(tid, r);
          changed.add(tid);
          r.historyFor = null;
        }
      } else if (item.live) {
        for (const tid of item.live.runs || []) {
          const r = runs.get(tid);
          if (r) { r.held = true; changed.add(tid); }
        }
        setConnection("live", "live");
        refresh = true;
      } else if (item.liveness) {
        for (const [tid, value] of Object.entries(item.liveness.runs || {})) {
          const r = runs.get(tid);
          if (r && !TERMINAL.has(r.status)) { r.liveness = value; changed.add(tid); }
        }
      } else if (item.resync) {
        setConnection("reconnecting", "catching up…");
      }
    }
    if (changed.size) renderAll(changed);
    if (refresh) loadRuns();
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (source) source.close();
    const url = cursor ? `/events?last_event_id=${encodeURIComponent(cursor)}` : "/events";
    source = new EventSource(url);
    stats.connects += 1;
    source.onopen = () => setConnection("live", "live");
    source.onmessage = (message) => {
      stats.messages += 1;
      if (message.lastEventId) cursor = message.lastEventId;
      let items;
      try { items = JSON.parse(message.data); } catch (err) { stats.errors += 1; return; }
      if (Array.isArray(items)) handle(items);
    };
    source.onerror = () => {
      setConnection("reconnecting", "reconnecting…");
      checkToken();
      // The browser retries by itself; if it gave up (CLOSED), start over with our cursor.
      if (source.readyState === EventSource.CLOSED) {
        reconnectTimer = setTimeout(connect, RECONNECT_MS);
      }
    };
  }

  async function loadRuns() {
    try {
      const data = await getJson("/api/runs?limit=200");
      if (isNum(data.time)) skew = data.time - Date.now() / 1000;
      for (const row of data.runs || []) {
        runs.set(row.training_id, fromSummary(row, runs.get(row.training_id)));
      }
      renderAll(null);
    } catch (err) { stats.errors += 1; }
  }

  // -- the Flows History page ----------------------------------------------------------

  function outcomeBadge(outcome) {
    const badge = make("span", `badge outcome-${outcome}`, outcome.replace("_", " "));
    badge.setAttribute("data-role", "outcome");
    return badge;
  }

  function flowRunItem(f) {
    const li = make("li", "run flow-run");
    li.setAttribute("data-flow-run-id", f.flow_run_id);
    li.tabIndex = 0;
    const head = make("div", "run-head");
    head.append(make("span", "run-name", f.flow_run_id), outcomeBadge(f.outcome));
    const meta = make("div", "run-meta");
    meta.append(
      make("span", "flow-name", f.flow_id || ""),
      make("span", "started", fmtStart(f.started_at)),
      make("span", "duration", fmtDuration(f.duration)),
      make("span", "counts", `${f.step_count} step${f.step_count === 1 ? "" : "s"} · ${f.run_count} run${f.run_count === 1 ? "" : "s"}`),
    );
    const steps = make("div", "flow-steps-mini");
    for (const st of f.steps) {
      const chip = make("span", `badge outcome-${st.outcome}`,
        `${st.flow_step_id || "step"}${st.attempt_count > 1 ? ` ×${st.attempt_count}` : ""}`);
      chip.title = shown(`${st.flow_step_id || "step"}: ${st.outcome}, ${st.attempt_count} attempt(s)`);
      steps.appendChild(chip);
    }
    li.append(head, meta, steps);
    const open = () => { location.hash = `flows=${encodeURIComponent(f.flow_run_id)}`; };
    li.addEventListener("click", open);
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    li.classList.toggle("selected", f.flow_run_id === flowRunChosen);
    return li;
  }

  async function loadFlows() {
    try {
      const data = await getJson("/api/flows");
      if (isNum(data.time)) skew = data.time - Date.now() / 1000;
      const list = data.flow_runs || [];
      const key = JSON.stringify([list, flowRunChosen]);
      if (key !== flowListKey) { // unchanged: leave the list (and any focus in it) alone
        flowListKey = key;
        flowList = list;
        $("flow-runs").replaceChildren(...flowList.map(flowRunItem));
      }
      $("flow-runs-empty").hidden = flowList.length > 0;
      const shown = flowRunChosen || (flowList[0] && flowList[0].flow_run_id) || null;
      if (shown) await loadFlowRun(shown);
      else { $("flow-detail-empty").hidden = false; $("flow-detail-body").hidden = true; }
    } catch (err) { stats.errors += 1; }
  }

  async function loadFlowRun(frid) {
    let data;
    try {
      data = await getJson(`/api/flows/${encodeURIComponent(frid)}`);
    } catch (err) {
      stats.errors += 1;
      flowRunKey = "";
      $("flow-detail-body").hidden = true;
      $("flow-detail-empty").hidden = false;
      setText($("flow-detail-empty"), `No flow run ${frid} on this hub.`);
      return;
    }
    if (page !== "flows") return;
    for (const li of $("flow-runs").children) {
      li.classList.toggle("selected", li.getAttribute("data-flow-run-id") === frid);
    }
    const key = JSON.stringify({ ...data, time: null });
    if (key === flowRunKey) return; // nothing new: no re-render under the reader's eyes
    flowRunKey = key;
    renderFlowRun(data);
  }

  function cell(row, value, cls) {
    const td = row.insertCell();
    if (cls) td.className = cls;
    if (value instanceof Node) td.appendChild(value);
    else td.textContent = shown(value);
    return td;
  }

  function metricText(v) { return isNum(v) ? window.PulseChart.formatValue(v) : "—"; }

  function renderFlowRun(f) {
    $("flow-detail-empty").hidden = true;
    $("flow-detail-body").hidden = false;
    setText($("f-id"), f.flow_run_id);
    setText($("f-flow"), f.flow_id || "");
    setText($("f-outcome"), f.outcome.replace("_", " "));
    setClass($("f-outcome"), "badge", `outcome-${f.outcome}`);
    setText($("f-times"), [
      isNum(f.started_at) ? `started ${fmtStart(f.started_at)}` : "not started",
      isNum(f.duration) ? `took ${fmtDuration(f.duration)}` : "",
      `${f.step_count} TRAIN step${f.step_count === 1 ? "" : "s"}, ${f.run_count} run${f.run_count === 1 ? "" : "s"}`,
    ].filter((v) => v).join(" · "));
    const sections = f.steps.map((st) => {
      const section = make("section", "flow-step panel");
      section.setAttribute("data-flow-step-id", st.flow_step_id || "");
      const h = make("h3", "flow-step-head");
      h.append(make("span", "step-name", st.flow_step_id || "(no step id)"), outcomeBadge(st.outcome),
               make("span", "count", `${st.attempt_count} attempt${st.attempt_count === 1 ? "" : "s"}`));
      const table = make("table", "attempts");
      const head = table.createTHead().insertRow();
      for (const t of ["attempt", "run", "outcome", "started", "duration", "epochs", "final loss", "best loss", "error"]) {
        head.appendChild(make("th", null, t));
      }
      const body = table.createTBody();
      for (const a of st.attempts) {
        const row = body.insertRow();
        row.setAttribute("data-training-id", a.training_id || "");
        row.className = `attempt outcome-row-${a.outcome}`;
        cell(row, isNum(a.attempt) ? `#${a.attempt}` : "#1", "attempt-no");
        const link = make("a", "run-link");
        link.setAttribute("href", `#run=${encodeURIComponent(a.training_id || "")}`);
        link.append(make("span", null, a.name || a.training_id || ""));
        if (a.name && a.training_id) link.append(" ", make("code", "short-id", shortId(a.training_id)));
        link.title = shown(`open run ${a.training_id}`);
        cell(row, link);
        cell(row, outcomeBadge(a.outcome));
        cell(row, fmtStart(a.started_at));
        cell(row, fmtDuration(a.duration), "num");
        const ep = a.epochs || {};
        cell(row, isNum(ep.epoch) ? `${ep.epoch}${isNum(ep.total_epochs) ? `/${ep.total_epochs}` : ""}` : "—", "num");
        const km = a.key_metrics || {};
        cell(row, metricText(km.final_loss), "num").setAttribute("data-metric", "final_loss");
        cell(row, metricText(km.best_loss), "num").setAttribute("data-metric", "best_loss");
        const err = make("span", "attempt-error");
        if (a.error) {
          err.append(make("code", "error-code", a.error.error_code), " ", make("span", null, a.error.message));
        }
        cell(row, err);
      }
      section.append(h, table);
      return section;
    });
    $("f-steps").replaceChildren(...sections);
  }

  function showPage(which) {
    page = which;
    $("runs-page").hidden = which !== "runs";
    $("flows-page").hidden = which !== "flows";
    $("page-runs").classList.toggle("current", which === "runs");
    $("page-flows").classList.toggle("current", which === "flows");
    clearInterval(flowTimer);
    flowTimer = null;
    if (which === "flows") {
      flowListKey = "";
      flowRunKey = "";
      loadFlows();
      flowTimer = setInterval(loadFlows, FLOWS_REFRESH_MS);
    }
  }

  function readHash() {
    const hash = location.hash.slice(1);
    const at = hash.indexOf("=");
    const key = at < 0 ? hash : hash.slice(0, at);
    const value = at < 0 ? "" : hash.slice(at + 1);
    let decoded = null;
    try { decoded = value ? decodeURIComponent(value) : null; } catch (err) { decoded = null; }
    if (key === "flows") {
      flowRunChosen = decoded;
      showPage("flows");
      return;
    }
    showPage("runs");
    if (key === "run" && decoded) { userChose = true; selected = decoded; }
    flowFilter = key === "flow" && decoded ? decoded : null;
    $("filter").hidden = !flowFilter;
    setText($("filter-value"), flowFilter || "");
    renderAll(null);
  }

  // Elapsed times and ETAs move on their own between updates.
  setInterval(() => {
    if (page !== "runs") return;
    for (const r of runs.values()) {
      if (!TERMINAL.has(r.status) && cards.has(r.training_id)) renderCardTimes(r, cards.get(r.training_id));
    }
    const r = selected ? runs.get(selected) : null;
    if (r) renderTimes(r);
  }, 1000);

  $("filter-clear").addEventListener("click", () => {
    history.replaceState(null, "", selected ? `#run=${encodeURIComponent(selected)}` : "#");
    readHash();
  });
  window.addEventListener("hashchange", readHash);

  // For tests and the benchmark: read-only views of what the page holds.
  window.pulse = { stats, runs, fraction, eta, get cursor() { return cursor; } };

  readHash();
  loadRuns();
  connect();
})();

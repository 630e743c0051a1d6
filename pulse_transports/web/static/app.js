// PULSE web view: the page's logic. No build step, no framework.
//
// It reads /events (server-sent events; every message is a JSON array of items:
// events, and hello/snapshot/live/liveness/resync objects), folds the events into
// one model per run (the reducer's rules: seq order, a terminal status is final,
// only legal status moves), and renders the runs. /api/runs lists finished runs
// too; /api/runs/{id} and /api/runs/{id}/metrics fill in a run when it is chosen.
//
// Everything that comes from a run -- ids, names, messages, error details, metric
// names -- is untrusted text: it is only ever put in the page with textContent or
// setAttribute, never parsed as HTML.
"use strict";

(function () {
  const TERMINAL = new Set(["done", "error", "cancelled"]);
  const NAMED_METRICS = ["loss", "time_per_epoch", "samples_per_second", "tokens_per_second"];
  const MAX_POINTS = 1000;
  const MAX_FINISHED = 20;
  const RECONNECT_MS = 1000;

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

  const $ = (id) => document.getElementById(id);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  // -- the model --------------------------------------------------------------

  function blank(tid) {
    return {
      training_id: tid, name: null, status: "idle", message: "", liveness: "alive",
      epoch: null, total_epochs: null, step: null, total_steps: null,
      metrics: {}, errors: [], error_count: 0, flow: null, timeline: [],
      last_seq: 0, created_at: null, finished_at: null, last_event_at: null,
      degraded: false, held: false, complete: false, loss: [], band: [], historyFor: null,
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
      finished_at: view.timings ? view.timings.finished_at : null,
      last_event_at: view.timings ? view.timings.last_event_at : null,
      degraded: !!view.degraded, complete: true,
    });
    if (old) {
      r.held = old.held;
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
      created_at: row.created_at, finished_at: row.finished_at,
      last_event_at: row.last_event_at,
    });
    if (isNum(row.loss)) r.metrics.loss = row.loss;
    if (row.error) r.errors = [{ ...row.error, details: null, seq: null }];
    if (old) { r.loss = old.loss; r.band = old.band; r.historyFor = old.historyFor; }
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

  // -- rendering helpers ---------------------------------------------------------

  function setText(node, value) {
    const text = value === null || value === undefined ? "" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function setClass(node, base, variant) {
    const name = variant ? `${base} ${variant}` : base;
    if (node.className !== name) node.className = name;
  }

  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
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
    li.append(head, prog);
    li.addEventListener("click", () => choose(tid, true));
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") choose(tid, true); });
    c = { li, name, status, liveness, bar, fill, percent, position };
    cards.set(tid, c);
    return c;
  }

  function renderCard(r) {
    const c = card(r.training_id);
    setText(c.name, r.name || r.training_id);
    c.name.title = r.training_id;
    setText(c.status, statusText(r));
    setClass(c.status, "badge", statusClass(r));
    const live = livenessText(r);
    setText(c.liveness, live);
    setClass(c.liveness, "badge", `live-${live}`);
    const f = fraction(r);
    setBar(c.fill, c.bar, f);
    setText(c.percent, percentText(f));
    setText(c.position, positionText(r));
    c.li.classList.toggle("selected", selected === r.training_id);
    c.li.classList.toggle("lost", live === "lost");
    return c;
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
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
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

  async function loadHistory(tid) {
    const asked = runs.get(tid);
    if (asked) asked.historyLoading = true;
    try {
      const data = await getJson(`/api/runs/${encodeURIComponent(tid)}/metrics?names=loss`);
      const r = runs.get(tid);
      if (!r) return;
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
    if (!r) return;
    setText($("d-name"), r.name || r.training_id);
    setText($("d-id"), r.training_id);
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
    renderFlow(r);
    renderMetrics(r);
    renderErrors(r);
    renderTimeline(r);
    scheduleChart();
    ensureLoaded(r.training_id);
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
        const details = make("details", "error-details");
        details.append(make("summary", null, "details"),
                       make("pre", null, JSON.stringify(e.details, null, 2)));
        li.appendChild(details);
      }
      return li;
    });
    list.replaceChildren(...items);
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

  function drawChart() {
    const r = selected ? runs.get(selected) : null;
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
      // The browser retries by itself; if it gave up (CLOSED), start over with our cursor.
      if (source.readyState === EventSource.CLOSED) {
        reconnectTimer = setTimeout(connect, RECONNECT_MS);
      }
    };
  }

  async function loadRuns() {
    try {
      const data = await getJson("/api/runs?limit=200");
      for (const row of data.runs || []) {
        runs.set(row.training_id, fromSummary(row, runs.get(row.training_id)));
      }
      renderAll(null);
    } catch (err) { stats.errors += 1; }
  }

  function readHash() {
    const hash = location.hash.slice(1);
    const [key, value] = hash.split("=");
    const decoded = value ? decodeURIComponent(value) : null;
    if (key === "run" && decoded) { userChose = true; selected = decoded; }
    flowFilter = key === "flow" && decoded ? decoded : null;
    $("filter").hidden = !flowFilter;
    setText($("filter-value"), flowFilter || "");
    renderAll(null);
  }

  $("filter-clear").addEventListener("click", () => {
    history.replaceState(null, "", selected ? `#run=${encodeURIComponent(selected)}` : "#");
    readHash();
  });
  window.addEventListener("hashchange", readHash);

  // For tests and the benchmark: read-only views of what the page holds.
  window.pulse = { stats, runs, fraction, get cursor() { return cursor; } };

  readHash();
  loadRuns();
  connect();
})();

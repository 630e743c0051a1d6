/**
 * Folding events into a run's state (specs/protocol.md, "Folding" and
 * "Metric history"). Total: never throws for any decoded event.
 */
import type { ErrorEvent, Meta, PulseEvent } from "./decode.js";

export const STATUSES = ["idle", "preparing", "running", "cooling_down", "done", "error", "cancelled"] as const;
export const TERMINAL = new Set(["done", "error", "cancelled"]);
const NAMED = new Set(["loss", "time_per_epoch", "samples_per_second", "tokens_per_second"]);
const LEGAL: Record<string, readonly string[]> = {
  idle: ["preparing", "running", "error", "cancelled"],
  preparing: ["preparing", "running", "error", "cancelled"],
  running: ["running", "cooling_down", "done", "error", "cancelled"],
  cooling_down: ["cooling_down", "done", "error", "cancelled"],
  done: [],
  error: [],
  cancelled: [],
};
export const MAX_ERRORS = 32;
export const MAX_TIMELINE = 64;
export const MAX_ANOMALIES = 32;
export const MAX_GAPS = 16;
export const HEAD_KEPT = 8;
export const MAX_METRIC_NAMES = 64;
export const MAX_SERIES = 16;
export const MAX_WINDOWS = 128;
export const MAX_COUNT = 2n ** 63n - 1n;

export type Window = [x: number, n: number, first: number, last: number, min: number, max: number, t0: number, t1: number];
export interface Series {
  width: number;
  count: number;
  windows: Window[];
}
export interface Anomaly {
  seq: bigint;
  kind: string;
  detail: string;
}
export interface StatusEntry {
  status: string;
  message: string;
  timestamp: number;
  seq: bigint;
}

export class RunState {
  training_id: string | null = null;
  status = "idle";
  message = "";
  meta: Meta | null = null;
  epoch: bigint | null = null;
  total_epochs: bigint | null = null;
  step: bigint | null = null;
  total_steps: bigint | null = null;
  metrics = new Map<string, number>();
  best_loss: number | null = null;
  metrics_min = new Map<string, number>();
  metrics_max = new Map<string, number>();
  metrics_dropped = 0n;
  history = new Map<string, Series>();
  errors: ErrorEvent[] = [];
  error_count = 0;
  timeline: StatusEntry[] = [];
  timeline_count = 0;
  status_durations = new Map<string, number>();
  created_at: number | null = null;
  started_at: number | null = null;
  finished_at: number | null = null;
  status_since: number | null = null;
  last_event_at: number | null = null;
  last_seq = 0n;
  event_count = 0;
  duplicates = 0;
  missing = 0n;
  gaps: [bigint, bigint][] = [];
  anomalies: Anomaly[] = [];
  anomaly_count = 0;
  unknown_events = 0;
  dropped = 0n;

  get terminal(): boolean {
    return TERMINAL.has(this.status);
  }
}

function push<T>(items: T[], item: T, limit: number): void {
  if (items.length >= limit) items.splice(HEAD_KEPT, 1);
  items.push(item);
}

function anomaly(s: RunState, seq: bigint, kind: string, detail: string): void {
  s.anomaly_count++;
  push(s.anomalies, { seq, kind, detail }, MAX_ANOMALIES);
}

export function addSample(series: Series, y: number, t: number): void {
  const i = series.count++;
  const w = series.windows;
  const last = w[w.length - 1];
  if (last !== undefined) {
    if (i < last[0] + series.width) {
      last[1]++;
      last[3] = y;
      if (y < last[4]) last[4] = y;
      if (y > last[5]) last[5] = y;
      last[7] = t;
      return;
    }
    if (w.length >= MAX_WINDOWS) {
      const merged: Window[] = [];
      for (let k = 0; k < w.length; k += 2) {
        const a = w[k] as Window;
        const b = w[k + 1] as Window;
        merged.push([a[0], a[1] + b[1], a[2], b[3], Math.min(a[4], b[4]), Math.max(a[5], b[5]), a[6], b[7]]);
      }
      series.windows = merged;
      series.width *= 2;
    }
  }
  series.windows.push([i, 1, y, y, y, y, t, t]);
}

/** Apply one event to the state in place (steps 1-7). */
export function apply(s: RunState, e: PulseEvent): void {
  // A file writer's state_checkpoint line holds the fold so far: folding every
  // line, this reader skips it (it changes no state; protocol.md, "Checkpoints").
  if (e.type === "unknown" && e.tag === "state_checkpoint") return;
  if (s.training_id !== null && e.training_id !== s.training_id) {
    anomaly(s, e.seq, "foreign_event", `event of run ${e.training_id}`);
    return;
  }
  s.training_id = e.training_id;
  if (e.seq < 1n) {
    anomaly(s, 0n, "bad_seq", `seq ${e.seq} is not a positive integer`);
    return;
  }
  if (e.seq <= s.last_seq) {
    lateOrDuplicate(s, e.seq);
    return;
  }
  if (e.seq !== s.last_seq + 1n) {
    s.missing += e.seq - s.last_seq - 1n;
    s.gaps.push([s.last_seq + 1n, e.seq - 1n]);
    if (s.gaps.length > MAX_GAPS) s.gaps.shift();
  }
  s.last_seq = e.seq;
  s.event_count++;
  const ts = e.timestamp;
  if (s.created_at === null) {
    s.created_at = ts;
    s.status_since = ts;
  }
  if (s.last_event_at === null || ts > s.last_event_at) s.last_event_at = ts;
  if (e.type === "dropped") {
    const sum = s.dropped + (e.count > 0n ? e.count : 0n);
    s.dropped = sum > MAX_COUNT ? MAX_COUNT : sum;
    return;
  }
  if (s.terminal && e.type !== "heartbeat") {
    anomaly(s, e.seq, "after_terminal", `${e.type === "unknown" ? e.tag : e.type} event after ${s.status}`);
    return;
  }
  switch (e.type) {
    case "progress":
      if (e.epoch !== null) s.epoch = e.epoch;
      if (e.total_epochs !== null) s.total_epochs = e.total_epochs;
      if (e.step !== null) s.step = e.step;
      if (e.total_steps !== null) s.total_steps = e.total_steps;
      break;
    case "metrics": {
      const values: [string, number | null][] = [
        ["loss", e.loss],
        ["time_per_epoch", e.time_per_epoch],
        ["samples_per_second", e.samples_per_second],
        ["tokens_per_second", e.tokens_per_second],
        ...e.extra,
      ];
      for (const [name, value] of values) {
        if (value === null) continue;
        if (!s.metrics.has(name) && !NAMED.has(name)) {
          let kept = 0;
          for (const k of s.metrics.keys()) if (!NAMED.has(k)) kept++;
          if (kept >= MAX_METRIC_NAMES) {
            anomaly(s, e.seq, "too_many_metrics", `metric ${name} not kept`);
            continue;
          }
        }
        s.metrics.set(name, value);
        const lo = s.metrics_min.get(name);
        const hi = s.metrics_max.get(name);
        if (lo === undefined || hi === undefined) {
          s.metrics_min.set(name, value);
          s.metrics_max.set(name, value);
        } else if (value < lo) s.metrics_min.set(name, value);
        else if (value > hi) s.metrics_max.set(name, value);
        let series = s.history.get(name);
        if (series === undefined) {
          if (!NAMED.has(name)) {
            let extra = 0;
            for (const k of s.history.keys()) if (!NAMED.has(k)) extra++;
            if (extra >= MAX_SERIES) continue;
          }
          series = { width: 1, count: 0, windows: [] };
          s.history.set(name, series);
        }
        addSample(series, value, ts);
      }
      for (const [name, value] of e.min) {
        const lo = s.metrics_min.get(name);
        if (lo !== undefined && value < lo) s.metrics_min.set(name, value);
      }
      for (const [name, value] of e.max) {
        const hi = s.metrics_max.get(name);
        if (hi !== undefined && value > hi) s.metrics_max.set(name, value);
      }
      if (e.names_dropped !== null && e.names_dropped > s.metrics_dropped) {
        s.metrics_dropped = e.names_dropped > MAX_COUNT ? MAX_COUNT : e.names_dropped;
      }
      const low = s.metrics_min.get("loss");
      if (low !== undefined && (s.best_loss === null || low < s.best_loss)) s.best_loss = low;
      break;
    }
    case "status":
      applyStatus(s, e.status, e.message, ts, e.seq);
      break;
    case "error":
      s.error_count++;
      push(s.errors, e, MAX_ERRORS);
      break;
    case "meta":
      s.meta = e;
      if (e.total_epochs !== null && s.total_epochs === null) s.total_epochs = e.total_epochs;
      if (e.total_steps !== null && s.total_steps === null) s.total_steps = e.total_steps;
      break;
    case "heartbeat":
      break;
    case "unknown":
      s.unknown_events++;
      break;
  }
}

function lateOrDuplicate(s: RunState, seq: bigint): void {
  for (let k = 0; k < s.gaps.length; k++) {
    const [lo, hi] = s.gaps[k] as [bigint, bigint];
    if (lo <= seq && seq <= hi) {
      const pieces: [bigint, bigint][] = [];
      if (lo <= seq - 1n) pieces.push([lo, seq - 1n]);
      if (seq + 1n <= hi) pieces.push([seq + 1n, hi]);
      s.gaps.splice(k, 1, ...pieces);
      if (s.gaps.length > MAX_GAPS) s.gaps.splice(0, s.gaps.length - MAX_GAPS);
      s.missing -= 1n;
      anomaly(s, seq, "late_event", `seq ${seq} arrived after seq ${s.last_seq}`);
      return;
    }
  }
  s.duplicates++;
}

function applyStatus(s: RunState, target: string, message: string, ts: number, seq: bigint): void {
  const current = s.status;
  if (!(STATUSES as readonly string[]).includes(target)) {
    anomaly(s, seq, "unknown_status", `status ${target}`);
    return;
  }
  if (!(LEGAL[current] ?? []).includes(target)) {
    anomaly(s, seq, "illegal_transition", `${current} -> ${target}`);
    return;
  }
  s.message = message;
  s.timeline_count++;
  push(s.timeline, { status: target, message, timestamp: ts, seq }, MAX_TIMELINE);
  if (target === current) return;
  const since = s.status_since ?? ts;
  const spent = ts > since ? ts - since : 0;
  s.status_durations.set(current, (s.status_durations.get(current) ?? 0) + spent);
  s.status_since = ts;
  s.status = target;
  if (s.started_at === null && (target === "preparing" || target === "running")) s.started_at = ts;
  if (TERMINAL.has(target)) s.finished_at = ts;
}

export function replay(events: Iterable<PulseEvent>): RunState {
  const s = new RunState();
  for (const e of events) apply(s, e);
  return s;
}

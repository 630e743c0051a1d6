/**
 * Projections of a run's state (specs/protocol.md, "Liveness", "The v1
 * snapshot", "The v2 view", "The Flow History record", "Metric history").
 * Pure: time comes in as `now`.
 */
import type { ErrorEvent } from "./decode.js";
import { type RunState, type Series } from "./fold.js";

export type Liveness = "alive" | "stale" | "lost" | "ended";
export const STALE_AFTER = 15;
export const LOST_AFTER = 600;
const LOST_MESSAGE = "training process lost: the writer is gone and the run never ended";

const num = (v: bigint | null): number | null => (v === null ? null : Number(v));

export function livenessOf(
  s: RunState,
  now: number,
  opts: { writerAlive?: boolean | null; staleAfter?: number; lostAfter?: number } = {},
): Liveness {
  if (s.terminal) return "ended";
  const alive = opts.writerAlive ?? null;
  if (alive === false) return "lost";
  if (s.last_event_at === null) return alive === true ? "alive" : "stale";
  const silence = now - s.last_event_at;
  if (silence > (opts.lostAfter ?? LOST_AFTER)) return "lost";
  if (silence > (opts.staleAfter ?? STALE_AFTER)) return "stale";
  return "alive";
}

/** Round half to even. */
function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** `2026-01-01T00:00:07.000Z`: rounded to the microsecond, then cut to ms; null outside years 1-9999. */
export function isoUtc(ts: number | null): string | null {
  if (ts === null || !Number.isFinite(ts)) return null;
  let whole = Math.trunc(ts);
  let us = roundEven((ts - whole) * 1e6);
  if (us >= 1e6) {
    whole += 1;
    us -= 1e6;
  } else if (us < 0) {
    whole -= 1;
    us += 1e6;
  }
  if (Math.abs(whole) > 8.64e12) return null;
  const d = new Date(whole * 1000);
  const year = d.getUTCFullYear();
  if (year < 1 || year > 9999) return null;
  const p = (v: number, w = 2): string => String(v).padStart(w, "0");
  return (
    `${p(year, 4)}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())}T${p(d.getUTCHours())}:` +
    `${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(Math.floor(us / 1000), 3)}Z`
  );
}

export function toV1(s: RunState, liveness: Liveness | null = null): Record<string, unknown> {
  let status = s.status;
  let message = s.message;
  if (liveness === "lost" && !s.terminal) {
    status = "error";
    message = `${LOST_MESSAGE} (last status ${s.status})`;
  }
  return {
    status,
    epoch: s.epoch === null ? 0 : Number(s.epoch),
    total_epochs: s.total_epochs === null ? 0 : Number(s.total_epochs),
    loss: s.metrics.get("loss") ?? null,
    message,
    timestamp: isoUtc(s.last_event_at),
  };
}

export function progressFraction(s: RunState): number | null {
  if (s.status === "done") return 1.0;
  let within: number | null = null;
  if (s.step !== null && s.total_steps !== null && s.total_steps > 0n) {
    within = Math.min(Math.max(Number(s.step) / Number(s.total_steps), 0), 1);
  }
  if (s.total_epochs !== null && s.total_epochs > 0n) {
    const epoch = s.epoch === null ? 1 : Number(s.epoch);
    const done = Math.max(epoch - 1, 0) + (within ?? 0);
    return Math.min(done / Number(s.total_epochs), 1);
  }
  return within;
}

function errorDict(e: ErrorEvent): Record<string, unknown> {
  return {
    error_code: e.error_code,
    message: e.message,
    is_retryable: e.is_retryable,
    details: e.details,
    epoch: num(e.epoch),
    step: num(e.step),
    timestamp: e.timestamp,
    seq: Number(e.seq),
  };
}

/** Start (preparing/running) to end: finished_at; a lost run (or no `now`): last_event_at; else now. */
export function duration(s: RunState, now: number | null, liveness: Liveness | null): number | null {
  if (s.started_at === null) return null;
  let end: number | null;
  if (s.finished_at !== null) end = s.finished_at;
  else if (liveness === "lost" || now === null) end = s.last_event_at;
  else end = now;
  return end === null ? null : Math.max(0, end - s.started_at);
}

function flow(s: RunState): Record<string, unknown> | null {
  const m = s.meta;
  if (m === null || !(m.flow_id || m.flow_run_id || m.flow_step_id)) return null;
  return { flow_id: m.flow_id, flow_run_id: m.flow_run_id, flow_step_id: m.flow_step_id, attempt: num(m.attempt) };
}

const obj = <V>(m: Map<string, V>): Record<string, V> => Object.fromEntries(m);

export function toView(s: RunState, now: number, liveness: Liveness | null = null): Record<string, unknown> {
  const live = liveness ?? livenessOf(s, now);
  const m = s.meta;
  const durations = new Map(s.status_durations);
  if (s.status_since !== null && !s.terminal) {
    durations.set(s.status, (durations.get(s.status) ?? 0) + Math.max(0, now - s.status_since));
  }
  const last = s.errors[s.errors.length - 1];
  return {
    training_id: s.training_id,
    status: s.status,
    message: s.message,
    terminal: s.terminal,
    liveness: live,
    progress: {
      epoch: num(s.epoch),
      total_epochs: num(s.total_epochs),
      step: num(s.step),
      total_steps: num(s.total_steps),
      fraction: progressFraction(s),
    },
    metrics: obj(s.metrics),
    metrics_min: obj(s.metrics_min),
    metrics_max: obj(s.metrics_max),
    best_loss: s.best_loss,
    errors: s.errors.map(errorDict),
    error_count: s.error_count,
    last_error: last === undefined ? null : errorDict(last),
    flow: flow(s),
    run: {
      name: m?.name ?? null,
      pid: num(m?.pid ?? null),
      host: m?.host ?? null,
      world_size: num(m?.world_size ?? null),
      labels: m ? obj(m.labels) : {},
    },
    timings: {
      created_at: s.created_at,
      started_at: s.started_at,
      finished_at: s.finished_at,
      status_since: s.status_since,
      last_event_at: s.last_event_at,
      duration: duration(s, now, live),
      status_durations: obj(durations),
    },
    timeline: s.timeline.map((t) => ({ status: t.status, message: t.message, timestamp: t.timestamp, seq: Number(t.seq) })),
    anomalies: s.anomalies.map((a) => ({ seq: Number(a.seq), kind: a.kind, detail: a.detail })),
    anomaly_count: s.anomaly_count,
    degraded: s.dropped > 0n,
    stats: {
      events: s.event_count,
      last_seq: Number(s.last_seq),
      duplicates: s.duplicates,
      missing: Number(s.missing),
      unknown_events: s.unknown_events,
      dropped: Number(s.dropped),
      timeline_count: s.timeline_count,
      metrics_dropped: Number(s.metrics_dropped),
    },
  };
}

const OUTCOME: Record<string, string> = { done: "success", error: "error", cancelled: "cancelled" };

export function toHistoryRecord(s: RunState, liveness: Liveness | null = null, now: number | null = null): Record<string, unknown> {
  const m = s.meta;
  const outcome =
    OUTCOME[s.status] ?? (liveness === "lost" ? "lost" : s.status === "idle" ? "not_started" : "running");
  const last = s.errors[s.errors.length - 1];
  return {
    kind: "train",
    training_id: s.training_id,
    flow_id: m?.flow_id ?? null,
    flow_run_id: m?.flow_run_id ?? null,
    flow_step_id: m?.flow_step_id ?? null,
    attempt: num(m?.attempt ?? null),
    ran: s.started_at !== null,
    outcome,
    status: s.status,
    message: s.message,
    started_at: s.started_at,
    finished_at: s.finished_at,
    duration: duration(s, now, liveness),
    epochs: { epoch: num(s.epoch), total_epochs: num(s.total_epochs) },
    key_metrics: {
      final_loss: s.metrics.get("loss") ?? null,
      best_loss: s.best_loss,
      time_per_epoch: s.metrics.get("time_per_epoch") ?? null,
      samples_per_second: s.metrics.get("samples_per_second") ?? null,
      tokens_per_second: s.metrics.get("tokens_per_second") ?? null,
    },
    error: last === undefined ? null : { error_code: last.error_code, message: last.message, is_retryable: last.is_retryable, count: s.error_count },
    retryable: last !== undefined && last.is_retryable && outcome === "error",
  };
}

function seriesDict(series: Series): Record<string, unknown> {
  return {
    width: series.width,
    count: series.count,
    windows: series.windows.map((w) => ({ x: w[0], n: w[1], first: w[2], last: w[3], min: w[4], max: w[5], t0: w[6], t1: w[7] })),
  };
}

export function toMetricHistory(s: RunState): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, series] of s.history) out[name] = seriesDict(series);
  return out;
}

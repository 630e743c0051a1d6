/**
 * Every conformance vector (specs/vectors) and every generated case
 * (specs/corpus/differential.jsonl) through this reader: the lines rejected,
 * and the v1, view, history, metric history and liveness computed.
 */
import { test } from "node:test";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import {
  type PulseEvent, DecodeError, decodeLine, splitLines, replay, livenessOf,
  toV1, toView, toHistoryRecord, toMetricHistory,
} from "../src/index.js";

const SPECS = fileURLToPath(new URL("../../../../specs/", import.meta.url));

/** Differences between two JSON values: objects by key, numbers with relative tolerance 1e-9, anomalies by seq and kind. */
export function diff(got: unknown, want: unknown, path = "$", out: string[] = []): string[] {
  if (typeof want === "number" && typeof got === "number") {
    const scale = Math.max(Math.abs(want), Math.abs(got), 1e-300);
    if (got !== want && Math.abs(got - want) / scale > 1e-9) out.push(`${path}: got ${got}, want ${want}`);
    return out;
  }
  if (Array.isArray(want) && Array.isArray(got)) {
    if (got.length !== want.length) {
      out.push(`${path}: length ${got.length}, want ${want.length}`);
      return out;
    }
    want.forEach((w, i) => diff(got[i], w, `${path}[${i}]`, out));
    return out;
  }
  if (want !== null && typeof want === "object" && got !== null && typeof got === "object" && !Array.isArray(got)) {
    const g = got as Record<string, unknown>;
    const w = want as Record<string, unknown>;
    const keys = new Set([...Object.keys(g), ...Object.keys(w)]);
    for (const k of keys) {
      if (!(k in w)) out.push(`${path}.${k}: unexpected`);
      else if (!(k in g)) out.push(`${path}.${k}: missing`);
      else if (k === "detail" && path.includes(".anomalies[")) continue; // wording is free
      else diff(g[k], w[k], `${path}.${k}`, out);
    }
    return out;
  }
  if (got !== want) out.push(`${path}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  return out;
}

function read(lines: Uint8Array[]): { events: PulseEvent[]; rejected: number[] } {
  const events: PulseEvent[] = [];
  const rejected: number[] = [];
  lines.forEach((line, i) => {
    try {
      events.push(decodeLine(line));
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      rejected.push(i + 1);
    }
  });
  return { events, rejected };
}

const names = readdirSync(join(SPECS, "vectors"))
  .filter((f) => f.endsWith(".jsonl"))
  .map((f) => f.slice(0, -".jsonl".length))
  .sort();

test("the hand-written vectors are all there", () => {
  if (names.length < 17) throw new Error(`only ${names.length} vectors`);
});

for (const name of names) {
  test(`vector ${name}`, () => {
    const log = new Uint8Array(readFileSync(join(SPECS, "vectors", `${name}.jsonl`)));
    const want = JSON.parse(readFileSync(join(SPECS, "vectors", `${name}.expected.json`), "utf8")) as Record<string, any>;
    const { events, rejected } = read(splitLines(log));
    const s = replay(events);
    const live = livenessOf(s, want.now);
    const got = {
      errors: rejected.length,
      rejected_lines: rejected,
      v1: toV1(s),
      view: toView(s, want.now),
      history: toHistoryRecord(s),
      metric_history: toMetricHistory(s),
      live: { liveness: live, v1: toV1(s, live), history: toHistoryRecord(s, live, want.now) },
    };
    const { description: _d, now: _n, nonconforming_lines: _c, ...rest } = want;
    const problems = diff(got, rest);
    if (problems.length) throw new Error(problems.slice(0, 20).join("\n"));
  });
}

interface CorpusCase {
  now: number;
  liveness: string;
  view?: Record<string, unknown>;
  view_changes?: Record<string, unknown>;
  v1: unknown;
  history: unknown;
}
interface CorpusLog {
  name: string;
  lines: (string | { base64: string })[];
  final_newline: boolean;
  rejected_lines: number[];
  v1: unknown;
  history: unknown;
  metric_history: unknown;
  cases: CorpusCase[];
}

/** The log's bytes exactly as the generator wrote them. */
function bytesOf(log: CorpusLog): Uint8Array {
  const parts = log.lines.map((l) => (typeof l === "string" ? Buffer.from(l, "utf8") : Buffer.from(l.base64, "base64")));
  const joined: Buffer[] = [];
  parts.forEach((p, i) => {
    joined.push(p);
    if (i < parts.length - 1 || log.final_newline) joined.push(Buffer.from("\n"));
  });
  return new Uint8Array(Buffer.concat(joined));
}

test("the generated differential corpus", () => {
  const text = readFileSync(join(SPECS, "corpus", "differential.jsonl"), "utf8");
  const logs = text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as CorpusLog);
  if (logs.length < 500) throw new Error(`only ${logs.length} logs`);
  const failures: string[] = [];
  let checked = 0;
  for (const log of logs) {
    const { events, rejected } = read(splitLines(bytesOf(log)));
    const s = replay(events);
    const problems = diff(
      { rejected_lines: rejected, v1: toV1(s), history: toHistoryRecord(s), metric_history: toMetricHistory(s) },
      { rejected_lines: log.rejected_lines, v1: log.v1, history: log.history, metric_history: log.metric_history },
    );
    let first: Record<string, unknown> | undefined;
    for (const c of log.cases) {
      const view = c.view ?? { ...first, ...c.view_changes };
      first ??= c.view;
      const live = livenessOf(s, c.now);
      diff(
        { liveness: live, view: toView(s, c.now), v1: toV1(s, live), history: toHistoryRecord(s, live, c.now) },
        { liveness: c.liveness, view, v1: c.v1, history: c.history },
        `$[now=${c.now}]`,
        problems,
      );
      checked++;
    }
    if (problems.length) failures.push(`${log.name}:\n  ${problems.slice(0, 8).join("\n  ")}`);
  }
  if (failures.length) throw new Error(`${failures.length} of ${logs.length} logs differ\n${failures.slice(0, 10).join("\n")}`);
  if (checked < 1500) throw new Error(`only ${checked} (log, now) cases`);
});

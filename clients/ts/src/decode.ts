/**
 * Decoding one line into an event (specs/protocol.md, "Readers", rules 1-7).
 */
import { type JObject, type JValue, JsonError, decodeUtf8, isObject, parseJson, toPlain } from "./json.js";

export const TRAINING_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class DecodeError extends Error {}

interface Envelope {
  training_id: string;
  v: bigint;
  seq: bigint;
  timestamp: number;
}
export interface Meta extends Envelope {
  type: "meta";
  name: string | null;
  flow_id: string | null;
  flow_run_id: string | null;
  flow_step_id: string | null;
  attempt: bigint | null;
  total_epochs: bigint | null;
  total_steps: bigint | null;
  pid: bigint | null;
  host: string | null;
  world_size: bigint | null;
  labels: Map<string, string>;
}
export interface Status extends Envelope {
  type: "status";
  status: string;
  message: string;
}
export interface Progress extends Envelope {
  type: "progress";
  epoch: bigint | null;
  total_epochs: bigint | null;
  step: bigint | null;
  total_steps: bigint | null;
}
export interface Metrics extends Envelope {
  type: "metrics";
  loss: number | null;
  time_per_epoch: number | null;
  samples_per_second: number | null;
  tokens_per_second: number | null;
  extra: Map<string, number>;
  min: Map<string, number>;
  max: Map<string, number>;
  names_dropped: bigint | null;
}
export interface ErrorEvent extends Envelope {
  type: "error";
  error_code: string;
  message: string;
  is_retryable: boolean;
  details: Record<string, unknown> | null;
  epoch: bigint | null;
  step: bigint | null;
}
export interface Heartbeat extends Envelope {
  type: "heartbeat";
}
export interface Dropped extends Envelope {
  type: "dropped";
  count: bigint;
  reason: string;
}
export interface Unknown extends Envelope {
  type: "unknown";
  tag: string;
}
export type PulseEvent = Meta | Status | Progress | Metrics | ErrorEvent | Heartbeat | Dropped | Unknown;

type Kind = "int" | "num" | "str" | "bool" | "strmap" | "nummap" | "obj";
interface Field {
  kind: Kind;
  required?: boolean;
  nullOk?: boolean;
  dflt?: unknown;
}
const opt = (kind: Kind): Field => ({ kind, nullOk: true, dflt: null });
const SCHEMAS: Record<string, Record<string, Field>> = {
  meta: {
    name: opt("str"), flow_id: opt("str"), flow_run_id: opt("str"), flow_step_id: opt("str"),
    attempt: opt("int"), total_epochs: opt("int"), total_steps: opt("int"), pid: opt("int"),
    host: opt("str"), world_size: opt("int"), labels: { kind: "strmap", dflt: "map" },
  },
  status: { status: { kind: "str", required: true }, message: { kind: "str", dflt: "" } },
  progress: { epoch: opt("int"), total_epochs: opt("int"), step: opt("int"), total_steps: opt("int") },
  metrics: {
    loss: opt("num"), time_per_epoch: opt("num"), samples_per_second: opt("num"),
    tokens_per_second: opt("num"), extra: { kind: "nummap", dflt: "map" },
    min: { kind: "nummap", dflt: "map" }, max: { kind: "nummap", dflt: "map" },
    names_dropped: opt("int"),
  },
  error: {
    error_code: { kind: "str", required: true }, message: { kind: "str", required: true },
    is_retryable: { kind: "bool", dflt: false }, details: opt("obj"), epoch: opt("int"), step: opt("int"),
  },
  heartbeat: {},
  dropped: { count: { kind: "int", required: true }, reason: { kind: "str", dflt: "" } },
};

function bad(why: string): never {
  throw new DecodeError(why);
}

function check(name: string, f: Field, v: JValue): unknown {
  switch (f.kind) {
    case "int":
      return typeof v === "bigint" ? v : bad(`${name}: expected an integer`);
    case "num":
      if (typeof v === "bigint") return Number(v);
      return typeof v === "number" ? v : bad(`${name}: expected a number`);
    case "str":
      return typeof v === "string" ? v : bad(`${name}: expected a string`);
    case "bool":
      return typeof v === "boolean" ? v : bad(`${name}: expected a boolean`);
    case "strmap": {
      if (!isObject(v)) return bad(`${name}: expected an object`);
      for (const x of v.values()) if (typeof x !== "string") bad(`${name}: expected string values`);
      return v;
    }
    case "nummap": {
      if (!isObject(v)) return bad(`${name}: expected an object`);
      const out = new Map<string, number>();
      for (const [k, x] of v) {
        if (typeof x === "bigint") out.set(k, Number(x));
        else if (typeof x === "number") out.set(k, x);
        else bad(`${name}: expected number values`);
      }
      return out;
    }
    case "obj":
      return isObject(v) ? toPlain(v) : bad(`${name}: expected an object`);
  }
}

/** Build an event from a parsed JSON value (rules 2-7). */
export function fromValue(obj: JValue): PulseEvent {
  if (!isObject(obj)) bad("not an object");
  const o: JObject = obj;
  const tid = o.get("training_id");
  if (typeof tid !== "string" || !TRAINING_ID_RE.test(tid)) bad("bad training_id");
  const v = o.get("v");
  if (typeof v !== "bigint" || v < 2n) bad("bad v");
  const tag = o.get("type");
  if (typeof tag !== "string" || tag === "") bad("bad type");
  const seq = o.get("seq");
  if (typeof seq !== "bigint") bad("seq must be an integer");
  const ts = o.get("timestamp");
  if (typeof ts !== "bigint" && typeof ts !== "number") bad("timestamp must be a number");
  const env = { training_id: tid, v, seq, timestamp: Number(ts) };
  const schema = Object.prototype.hasOwnProperty.call(SCHEMAS, tag) ? SCHEMAS[tag] : undefined;
  if (schema === undefined) return { ...env, type: "unknown", tag };
  const out: Record<string, unknown> = { ...env, type: tag };
  for (const [name, f] of Object.entries(schema)) {
    const raw = o.get(name);
    if (raw === undefined) {
      if (f.required) bad(`${name} is required`);
      out[name] = f.dflt === "map" ? new Map() : f.dflt;
    } else if (raw === null && f.nullOk) {
      out[name] = null;
    } else {
      out[name] = check(name, f, raw);
    }
  }
  return out as unknown as PulseEvent;
}

/** Decode one line (bytes, without its `\n`); throws DecodeError. */
export function decodeLine(line: Uint8Array): PulseEvent {
  let value: JValue;
  try {
    value = parseJson(decodeUtf8(line));
  } catch (e) {
    if (e instanceof JsonError) throw new DecodeError(e.message);
    throw e;
  }
  return fromValue(value);
}

/** Split a log at `\n`; a final piece after the last `\n` is a line unless it is empty. */
export function splitLines(data: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0x0a) {
      out.push(data.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < data.length) out.push(data.subarray(start));
  return out;
}

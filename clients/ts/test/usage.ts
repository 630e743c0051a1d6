/**
 * Compile-time check (tsc --strict): the types generated from
 * specs/schema/event.schema.json narrow by `type` for every known event,
 * and the unknown event stays apart. Nothing here runs; it must type-check.
 */
import type { KnownEvent, PulseEvent, UnknownEvent } from "../gen/event.js";
import type { PulseCloudEvent } from "../gen/cloudevent.js";
import type { V1Snapshot } from "../gen/v1_snapshot.js";

const KNOWN = ["meta", "status", "progress", "metrics", "error", "heartbeat", "dropped"] as const;

export function isKnown(e: PulseEvent): e is KnownEvent {
  return (KNOWN as readonly string[]).includes(e.type);
}

function assertNever(x: never): never {
  throw new Error(`unhandled ${JSON.stringify(x)}`);
}

/** Every branch reads a field only its type has: this compiles only if `type` narrows. */
export function describe(e: KnownEvent): string {
  switch (e.type) {
    case "meta":
      return `${e.name ?? ""} ${e.flow_id ?? ""} ${e.total_epochs ?? 0} ${Object.keys(e.labels ?? {}).length}`;
    case "status": {
      const s: "idle" | "preparing" | "running" | "cooling_down" | "done" | "error" | "cancelled" = e.status;
      return `${s} ${e.message ?? ""}`;
    }
    case "progress":
      return `${e.epoch ?? 0}/${e.total_epochs ?? 0} ${e.step ?? 0}/${e.total_steps ?? 0}`;
    case "metrics": {
      const loss: number | null | undefined = e.loss;
      return `${loss ?? ""} ${Object.keys(e.extra ?? {}).length} ${e.names_dropped ?? 0}`;
    }
    case "error": {
      const code: string = e.error_code;
      const retry: boolean | undefined = e.is_retryable;
      return `${code} ${e.message} ${retry ?? false}`;
    }
    case "heartbeat":
      return `alive at ${e.timestamp}`;
    case "dropped": {
      const n: number = e.count;
      return `${n} dropped: ${e.reason ?? ""}`;
    }
    case "state_checkpoint":
      return `state up to #${e.seq} (${e.lines ?? 0} lines before)`;
    default:
      return assertNever(e);
  }
}

export function skip(e: UnknownEvent): string {
  return `skipped ${e.type} #${e.seq} of ${e.training_id}`;
}

export function describeAny(e: PulseEvent): string {
  return isKnown(e) ? describe(e) : `unknown ${e.type}`;
}

export function unwrap(c: PulseCloudEvent): PulseEvent {
  const schema: string | undefined = c.dataschema;
  void schema;
  return c.data;
}

export function v1Status(s: V1Snapshot): string {
  return `${s.status} ${s.epoch}/${s.total_epochs} ${s.loss ?? "-"} ${s.timestamp ?? "never"}`;
}

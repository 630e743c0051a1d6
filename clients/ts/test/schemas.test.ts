/**
 * Ajv (draft 2020-12) with `strict: true` and no relaxation compiles every
 * schema in specs/schema, resolves the cloudevent -> event `$ref` by the
 * standard relative URI, and agrees with the vectors' verdicts.
 */
import { test } from "node:test";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import { DecodeError, decodeLine, decodeUtf8, parseJson, splitLines, toPlain } from "../src/index.js";

const SPECS = fileURLToPath(new URL("../../../../specs/", import.meta.url));
const files = readdirSync(join(SPECS, "schema")).filter((f) => f.endsWith(".schema.json")).sort();
const schemas = files.map((f) => JSON.parse(readFileSync(join(SPECS, "schema", f), "utf8")) as { $id: string });

function strictAjv(): Ajv2020 {
  const warnings: unknown[] = [];
  const logger = { log: () => {}, warn: (...a: unknown[]) => warnings.push(a), error: (...a: unknown[]) => warnings.push(a) };
  const ajv = new Ajv2020({ strict: true, allErrors: true, logger });
  for (const s of schemas) ajv.addSchema(s);
  (ajv as unknown as { warnings: unknown[] }).warnings = warnings;
  return ajv;
}

test("Ajv 2020 strict compiles every schema without a warning", () => {
  const ajv = strictAjv();
  if (files.length !== 3) throw new Error(`expected 3 schemas, found ${files.join(", ")}`);
  for (const s of schemas) ajv.getSchema(s.$id) ?? (() => { throw new Error(`no ${s.$id}`); })();
  const warnings = (ajv as unknown as { warnings: unknown[] }).warnings;
  if (warnings.length) throw new Error(JSON.stringify(warnings));
});

test("vector lines get the schema verdict their expected files give", () => {
  const ajv = strictAjv();
  const event = ajv.getSchema(schemas.find((s) => s.$id.endsWith("/event.schema.json"))!.$id)!;
  const v1 = ajv.getSchema(schemas.find((s) => s.$id.endsWith("/v1_snapshot.schema.json"))!.$id)!;
  let checked = 0;
  for (const f of readdirSync(join(SPECS, "vectors")).filter((x) => x.endsWith(".jsonl"))) {
    const name = f.slice(0, -6);
    const want = JSON.parse(readFileSync(join(SPECS, "vectors", `${name}.expected.json`), "utf8"));
    splitLines(new Uint8Array(readFileSync(join(SPECS, "vectors", f)))).forEach((line, i) => {
      let obj: unknown;
      try {
        obj = toPlain(parseJson(decodeUtf8(line))); // strict UTF-8 and JSON, as a reader decodes
      } catch {
        return;
      }
      if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return;
      let decodes = true;
      try {
        decodeLine(line);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
        decodes = false;
      }
      const conforming = decodes && !want.nonconforming_lines.includes(i + 1);
      if (event(obj) !== conforming) throw new Error(`${name} line ${i + 1}: schema says ${!conforming}`);
      checked++;
    });
    for (const snap of [want.v1, want.live.v1]) if (!v1(snap)) throw new Error(`${name}: v1 invalid`);
  }
  if (checked < 1000) throw new Error(`only ${checked} lines`);
});

test("a CloudEvent envelope validates through the relative $ref to the event schema", () => {
  const ajv = strictAjv();
  const ce = ajv.getSchema(schemas.find((s) => s.$id.endsWith("/cloudevent.schema.json"))!.$id)!;
  const data = { type: "status", v: 2, training_id: "run-1", seq: 3, timestamp: 1767225600.5, status: "running" };
  const env = {
    specversion: "1.0", id: "run-1:3", source: "/pulse/host-a/4242", type: "dev.pulse.v2.status",
    subject: "run-1", time: "2026-01-01T00:00:00.500000Z", datacontenttype: "application/json",
    dataschema: "https://pulse.dev/schemas/v2/event.schema.json", data,
  };
  if (!ce(env)) throw new Error(JSON.stringify(ce.errors));
  if (ce({ ...env, type: "dev.pulse.v2.progress" })) throw new Error("type must agree with data.type");
  if (ce({ ...env, data: { ...data, seq: 0 } })) throw new Error("data must be a conforming event");
});

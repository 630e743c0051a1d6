// Generate TypeScript types from every schema in specs/schema with
// json-schema-to-typescript (standard $ref resolution, no custom resolver),
// into gen/ (not checked in: always fresh from the schemas).
import { compileFromFile } from "json-schema-to-typescript";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const schemaDir = fileURLToPath(new URL("../../../specs/schema/", import.meta.url));
const out = fileURLToPath(new URL("../gen/", import.meta.url));
mkdirSync(out, { recursive: true });
for (const file of readdirSync(schemaDir).filter((f) => f.endsWith(".schema.json")).sort()) {
  const ts = await compileFromFile(join(schemaDir, file), {
    cwd: schemaDir,
    bannerComment: `/* Generated from specs/schema/${file} by json-schema-to-typescript; do not edit. */`,
    unreachableDefinitions: true,
    additionalProperties: true,
  });
  writeFileSync(join(out, file.replace(".schema.json", ".ts")), ts);
}

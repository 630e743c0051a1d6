/**
 * A strict RFC 8259 JSON parser for PULSE lines (specs/protocol.md, "Readers").
 *
 * `JSON.parse` cannot be used: it cannot tell `3` from `3.0`, it reorders
 * integer-like object keys, and it accepts lone surrogate escapes. Here:
 * integers (no fraction, no exponent) in [-2^63, 2^64-1] are `bigint`;
 * other numbers (integer literals outside that range included) are finite
 * `number`s (a literal that overflows a double is an error); objects are `Map`s in
 * the order written (a repeated key keeps its first position and takes the
 * last value); `\ud800` without its pair is an error.
 */

export type JValue = null | boolean | bigint | number | string | JValue[] | JObject;
export type JObject = Map<string, JValue>;

export class JsonError extends Error {}

const INT_MIN = -(2n ** 63n);
const INT_MAX = 2n ** 64n - 1n;
const MAX_DEPTH = 1024;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Decode UTF-8 strictly (a BOM is kept, so the JSON parser rejects it). */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new JsonError("not valid UTF-8");
  }
}

export function isObject(v: JValue | undefined): v is JObject {
  return v instanceof Map;
}

export function parseJson(text: string): JValue {
  let i = 0;
  const n = text.length;
  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const fail = (why: string): never => {
    throw new JsonError(`${why} at ${i}`);
  };
  const value = (depth: number): JValue => {
    ws();
    if (i >= n) fail("unexpected end");
    const c = text[i];
    if ((c === "{" || c === "[") && depth >= MAX_DEPTH) fail("nested too deeply");
    if (c === "{") {
      i++;
      const obj: JObject = new Map();
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = string();
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        obj.set(key, value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return obj;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: JValue[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    if (text.startsWith("true", i)) {
      i += 4;
      return true;
    }
    if (text.startsWith("false", i)) {
      i += 5;
      return false;
    }
    if (text.startsWith("null", i)) {
      i += 4;
      return null;
    }
    return number();
  };
  const number = (): bigint | number => {
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m === null) return fail("not a JSON value");
    const lit = m[0];
    i += lit.length;
    if (m[1] === undefined && m[2] === undefined) {
      const big = BigInt(lit);
      // Outside [-2^63, 2^64-1] an integer literal is read as a (non-integer) number.
      if (big >= INT_MIN && big <= INT_MAX) return big;
    }
    const num = Number(lit);
    if (!Number.isFinite(num)) fail("number overflows a double");
    return num;
  };
  const hex4 = (): number => {
    const h = text.slice(i, i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("bad \\u escape");
    i += 4;
    return parseInt(h, 16);
  };
  const string = (): string => {
    i++; // opening quote
    let out = "";
    let start = i;
    for (;;) {
      if (i >= n) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        return out;
      }
      if (c < 0x20) fail("control character in string");
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(start, i);
      i++;
      const e = text[i++];
      switch (e) {
        case '"': out += '"'; break;
        case "\\": out += "\\"; break;
        case "/": out += "/"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "u": {
          const u = hex4();
          if (u >= 0xd800 && u <= 0xdbff) {
            if (text.slice(i, i + 2) !== "\\u") fail("lone surrogate escape");
            i += 2;
            const lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) fail("lone surrogate escape");
            out += String.fromCharCode(u, lo);
          } else if (u >= 0xdc00 && u <= 0xdfff) {
            fail("lone surrogate escape");
          } else {
            out += String.fromCharCode(u);
          }
          break;
        }
        default:
          fail("bad escape");
      }
      start = i;
    }
  };
  const result = value(0);
  ws();
  if (i !== n) fail("trailing characters");
  return result;
}

/** A parsed value as plain JSON data (objects to plain objects, integers to numbers). */
export function toPlain(v: JValue): unknown {
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Map) {
    // fromEntries defines own properties: a "__proto__" key stays a key.
    return Object.fromEntries([...v].map(([k, x]) => [k, toPlain(x)]));
  }
  return v;
}

/** PULSE v2 reader: decode, fold, projections (written from specs/protocol.md). */
export * from "./json.js";
export * from "./decode.js";
export * from "./fold.js";
export * from "./project.js";

/**
 * Kiln's own tar codec, public entry of src/core/archive. A streaming writer
 * (POSIX pax: ustar headers plus pax records for long names, large numbers,
 * sub-second mtimes when asked and binary-safe `SCHILY.xattr.*` values;
 * deterministic bytes) and a streaming reader (ustar, pax `x`/`g`, GNU
 * `L`/`K`, base-256 numbers, verified checksums). No npm tar library is used:
 * they drop xattrs or corrupt binary pax values such as security.capability.
 * See header.ts, writer.ts and reader.ts for the exact rules and limits.
 */
export {
  BLOCK,
  type EncodeOptions,
  type EntryType,
  encodeHeader,
  paddingFor,
  type TarHeader,
} from './header.ts';
export { readTar, type TarEntry } from './reader.ts';
export { packTar, type TarSink, TarWriter, type TarWriterOptions } from './writer.ts';

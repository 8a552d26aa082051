/**
 * Block-style YAML for JSON-shaped values (maps, lists, strings, finite numbers, booleans,
 * null), the only shapes a rendered config holds, with map keys sorted at every level so the
 * text does not depend on the order keys were merged in. The `yaml` package's stringify took ~0.9 ms
 * per node config here, most of a bundle's cost; this takes a few µs. Strings are plain only
 * when no YAML 1.1 reader (nebula's go-yaml) could take them for anything else, and otherwise
 * double-quoted with JSON escapes, which YAML's double-quoted style accepts.
 */
export function toYaml(value: unknown): string {
  const out: string[] = [];
  if (isMapLike(value) && Object.keys(value).length > 0) writeMap(value, '', out);
  else out.push(inline(value));
  return `${out.join('\n')}\n`;
}

type Map = { [key: string]: unknown };
const isMapLike = (v: unknown): v is Map => v !== null && typeof v === 'object' && !Array.isArray(v);
const isEmpty = (v: unknown): boolean => (Array.isArray(v) ? v.length === 0 : isMapLike(v) && Object.keys(v).length === 0);
const nested = (v: unknown): boolean => (Array.isArray(v) || isMapLike(v)) && !isEmpty(v);

const PLAIN = /^[A-Za-z_][A-Za-z0-9_./-]*$/;
const RESERVED = /^(y|n|yes|no|on|off|true|false|null)$/i;

function scalar(s: string): string {
  return PLAIN.test(s) && !RESERVED.test(s) ? s : JSON.stringify(s);
}

function inline(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'string') return scalar(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error('a rendered config cannot hold a non-finite number');
    return String(v);
  }
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) return '[]';
  if (isMapLike(v)) return '{}';
  throw new Error(`a rendered config cannot hold a ${typeof v}`);
}

function writeMap(map: Map, indent: string, out: string[], firstPrefix?: string): void {
  let first = true;
  for (const k of Object.keys(map).sort()) {
    const v = map[k];
    const lead = first && firstPrefix !== undefined ? firstPrefix : indent;
    first = false;
    if (!nested(v)) {
      out.push(`${lead}${scalar(k)}: ${inline(v)}`);
      continue;
    }
    out.push(`${lead}${scalar(k)}:`);
    if (Array.isArray(v)) writeList(v, indent, out);
    else writeMap(v as Map, `${indent}  `, out);
  }
}

/** Lists go at the parent key's indentation, as go-yaml and most hand-written configs have them. */
function writeList(list: unknown[], indent: string, out: string[]): void {
  for (const item of list) {
    if (isMapLike(item) && !isEmpty(item)) writeMap(item, `${indent}  `, out, `${indent}- `);
    else if (Array.isArray(item) && item.length > 0) {
      out.push(`${indent}-`);
      writeList(item, `${indent}  `, out);
    } else out.push(`${indent}- ${inline(item)}`);
  }
}

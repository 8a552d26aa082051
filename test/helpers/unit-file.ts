/** `Key=value` lines of one section of a systemd unit file, each key with every value it is given. */
export function unitSection(unit: string, name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const line of unit.split('\n')) {
    const header = /^\[(.+)\]$/.exec(line);
    if (header) current = header[1]!;
    else if (current === name && /^[A-Za-z]+=/.test(line)) {
      const [key, ...value] = line.split('=');
      out.set(key!, [...(out.get(key!) ?? []), value.join('=')]);
    }
  }
  return out;
}

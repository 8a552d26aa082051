export interface LitestreamLine {
  level: string;
  msg: string;
  error?: string;
  fields: Record<string, unknown>;
}

/**
 * A line of Litestream's log: JSON with our config's `logging: {type: json}`, but text
 * (`... ERROR failed to run error="..."`) when it fails before reading the config.
 */
export function parseLitestreamLine(line: string): LitestreamLine | undefined {
  try {
    const { level, msg, error, time: _time, ...fields } = JSON.parse(line) as Record<string, unknown>;
    if (typeof level !== 'string' || typeof msg !== 'string') return undefined;
    return { level, msg, ...(error === undefined ? {} : { error: String(error) }), fields };
  } catch {
    const text = /\b(ERROR|WARN|INFO) (.*?)(?: error="(.*)")?$/.exec(line);
    if (!text) return undefined;
    return { level: text[1]!, msg: text[2]!, ...(text[3] === undefined ? {} : { error: text[3] }), fields: {} };
  }
}

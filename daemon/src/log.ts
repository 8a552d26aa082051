import { pino, type Logger } from 'pino';
import { redactPaths } from '../../server/src/log.js';

export type { Logger };

/** JSON lines on stderr (journald keeps them), with the server's redaction list plus the daemon's own fields. */
export function createDaemonLogger(level: string, destination: NodeJS.WritableStream = process.stderr): Logger {
  return pino(
    {
      level,
      base: { service: 'nebulagc' },
      redact: { paths: [...redactPaths, 'nodeToken', '*.nodeToken', 'node_token', '*.node_token'], censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label: string) => ({ level: label }) },
    },
    destination,
  );
}

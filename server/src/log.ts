import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Paths pino blanks out wherever they appear in a log object. Tokens and secrets should never
 * be passed to the logger at all; this is the net under that rule.
 */
export const redactPaths = [
  'token',
  '*.token',
  'secret',
  '*.secret',
  'hmacSecret',
  '*.hmacSecret',
  'adminToken',
  '*.adminToken',
  'consulToken',
  '*.consulToken',
  'secretAccessKey',
  '*.secretAccessKey',
  'ca_key',
  '*.ca_key',
  'headers.authorization',
  'headers["x-nebulagc-node-token"]',
  'headers["x-nebulagc-cluster-token"]',
  'req.headers.authorization',
  'req.headers["x-nebulagc-node-token"]',
  'req.headers["x-nebulagc-cluster-token"]',
];

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  const opts = {
    level,
    base: { service: 'nebulagc-server' },
    redact: { paths: redactPaths, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(opts, destination) : pino(opts);
}

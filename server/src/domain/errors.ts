/** Stable error codes. Clients branch on these, so never rename one. */
export type ErrorCode =
  | 'AUTH_MISSING'
  | 'AUTH_INVALID'
  | 'FORBIDDEN'
  | 'VALIDATION_FAILED'
  | 'INVALID_JSON'
  | 'INVALID_BUNDLE'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'RATE_LIMITED'
  | 'NOT_WRITABLE'
  | 'NOT_MASTER'
  | 'NOT_READY'
  | 'STALE_REPLICA'
  | 'SNAPSHOT_REQUIRED'
  | 'RECORD_FORMAT_MISMATCH'
  | 'SECRET_MISMATCH'
  | 'NOT_CAUGHT_UP'
  | 'HA_BUSY'
  | 'MIN_REPLICAS'
  | 'NO_CANDIDATE'
  | 'SYNC_TIMEOUT'
  | 'PKI_UNAVAILABLE'
  | 'NOT_ENROLLED'
  | 'INTERNAL';

/** A rule was broken. Carries no HTTP; the http layer maps the code to a status. */
export class DomainError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

export const notFound = (what: string): DomainError => new DomainError('NOT_FOUND', `${what} not found`);
export const conflict = (message: string): DomainError => new DomainError('CONFLICT', message);
export const invalid = (message: string): DomainError => new DomainError('VALIDATION_FAILED', message);
export const forbidden = (message: string): DomainError => new DomainError('FORBIDDEN', message);

/** Turns SQLite's unique-constraint failure into a CONFLICT, leaving other errors alone. */
export function rethrowUnique(err: unknown, message: string): never {
  const code = (err as { code?: string }).code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw conflict(message);
  throw err;
}

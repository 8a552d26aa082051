import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { HTTPException } from 'hono/http-exception';
import { z } from '@hono/zod-openapi';
import { WritesRefusedError } from '../db/writer.js';
import { DomainError, type ErrorCode } from '../domain/errors.js';
import type { Logger } from '../log.js';
import type { AppContext } from './context.js';
import { reply, setHeader } from './middleware/request-id.js';

const STATUS: Record<ErrorCode, ContentfulStatusCode> = {
  AUTH_MISSING: 401,
  AUTH_INVALID: 401,
  FORBIDDEN: 403,
  VALIDATION_FAILED: 400,
  INVALID_JSON: 400,
  INVALID_BUNDLE: 400,
  NOT_FOUND: 404,
  CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RATE_LIMITED: 429,
  NOT_WRITABLE: 503,
  NOT_MASTER: 503,
  NOT_READY: 503,
  STALE_REPLICA: 503,
  SNAPSHOT_REQUIRED: 409,
  RECORD_FORMAT_MISMATCH: 400,
  SECRET_MISMATCH: 400,
  NOT_CAUGHT_UP: 409,
  HA_BUSY: 409,
  MIN_REPLICAS: 409,
  NO_CANDIDATE: 409,
  SYNC_TIMEOUT: 503,
  PKI_UNAVAILABLE: 503,
  NOT_ENROLLED: 409,
  INTERNAL: 500,
};

export const errorSchema = z
  .object({
    error: z.string().openapi({ example: 'node not found' }),
    code: z.string().openapi({ example: 'NOT_FOUND' }),
    request_id: z.string(),
    details: z.unknown().optional(),
  })
  .openapi('Error');

const JSON_TYPE = { 'content-type': 'application/json' };

export function errorResponse(c: AppContext, code: ErrorCode, message: string, details?: unknown): Response {
  const body: Record<string, unknown> = { error: message, code, request_id: c.get('requestId') };
  if (details !== undefined) body.details = details;
  return reply(c, JSON.stringify(body), STATUS[code], JSON_TYPE);
}

/** Maps anything thrown by a handler to the JSON error shape. Unknown errors never leak detail. */
export function handleError(err: unknown, c: AppContext, log: Logger): Response {
  if (err instanceof DomainError) return errorResponse(c, err.code, err.message, err.details);
  if (err instanceof WritesRefusedError) {
    setHeader(c, 'Retry-After', '1');
    return errorResponse(c, 'NOT_WRITABLE', err.message);
  }
  if (err instanceof HTTPException) {
    if (err.status === 413) return errorResponse(c, 'PAYLOAD_TOO_LARGE', 'request body is too large');
    if (err.status === 415) return errorResponse(c, 'UNSUPPORTED_MEDIA_TYPE', 'send the body as application/json');
    if (err.status === 400 && /json/i.test(err.message)) return errorResponse(c, 'INVALID_JSON', 'request body is not valid JSON');
    if (err.status === 400) return errorResponse(c, 'VALIDATION_FAILED', err.message);
  }
  log.error({ err, request_id: c.get('requestId'), path: c.req.path }, 'unhandled error');
  return errorResponse(c, 'INTERNAL', 'internal error');
}

/** Turns zod issues into the VALIDATION_FAILED body: the first issue in words, all of them in details. */
export function validationFailed(c: AppContext, error: z.ZodError): Response {
  const issues = error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
  const first = issues[0]!;
  return errorResponse(c, 'VALIDATION_FAILED', first.path ? `${first.path}: ${first.message}` : first.message, issues);
}

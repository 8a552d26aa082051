import type { MiddlewareHandler, Next } from 'hono';
import { DomainError } from '../../domain/errors.js';
import type { AppContext, AppEnv } from '../context.js';

const BODYLESS = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);

/**
 * Parses JSON bodies up front so that a syntax error is INVALID_JSON rather than a validation
 * failure. Hono caches the parsed body, so the route's validator does not parse it twice.
 */
export const jsonBody = (): MiddlewareHandler<AppEnv> => (c, next) =>
  !BODYLESS.has(c.req.method) && /^application\/(.+\+)?json\b/i.test(c.req.header('content-type') ?? '')
    ? parseJson(c, next)
    : next();

async function parseJson(c: AppContext, next: Next): Promise<void> {
  try {
    await c.req.json();
  } catch (err) {
    if (err instanceof DomainError) throw err;
    if ((err as { status?: number }).status === 413) throw err;
    throw new DomainError('INVALID_JSON', 'request body is not valid JSON');
  }
  await next();
}

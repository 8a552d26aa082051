import { z } from '@hono/zod-openapi';

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

/** Consul's `wait`: a number with ms, s, m or h (a bare number is seconds), in ms. */
export const waitSchema = z
  .string()
  .regex(/^\d+(\.\d+)?(ms|s|m|h)?$/, 'must be a duration such as 500ms, 30s or 5m')
  .transform((v) => {
    const [, num, unit = 's'] = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v)!;
    return Math.round(Number(num) * UNIT_MS[unit as keyof typeof UNIT_MS]);
  });

export const indexSchema = z
  .string()
  .regex(/^\d{1,15}$/, 'must be a non-negative integer')
  .transform(Number);

/**
 * How long to hold: the requested wait (or the cap when none was asked) capped, plus up to a
 * sixteenth of it at random, as Consul does, so pollers that started together drift apart.
 */
export function holdMs(requested: number | undefined, capMs: number, random: () => number = Math.random): number {
  const wait = Math.min(requested ?? capMs, capMs);
  return wait + Math.floor(random() * (wait / 16));
}

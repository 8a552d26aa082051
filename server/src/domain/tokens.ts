import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export type TokenKind = 'op' | 'node' | 'cluster';

/** 256 random bits, prefixed with the kind so a leaked token is recognisable in a secret scanner. */
export function generateToken(kind: TokenKind): string {
  return `ngc_${kind}_${randomBytes(32).toString('base64url')}`;
}

/** Tokens are stored only as HMAC-SHA256 under the server secret, never in the clear. */
export function hashToken(secret: string, token: string): string {
  return createHmac('sha256', secret).update(token, 'utf8').digest('hex');
}

/** Constant-time comparison of two hex digests. */
export function hashesEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a, 'hex');
  const bb = Buffer.from(b, 'hex');
  return ab.length === bb.length && ab.length > 0 && timingSafeEqual(ab, bb);
}

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generateToken, hashesEqual, hashToken, type TokenKind } from '../../server/src/domain/tokens.js';

const SECRET_A = 'secret-a-0123456789abcdef0123456789abcdef';
const SECRET_B = 'secret-b-0123456789abcdef0123456789abcdef';

describe('generateToken', () => {
  for (const kind of ['op', 'node', 'cluster'] as TokenKind[]) {
    it(`has the ngc_${kind}_ prefix and 43 base64url characters (256 bits)`, () => {
      const token = generateToken(kind);
      const prefix = `ngc_${kind}_`;
      assert.ok(token.startsWith(prefix), token);
      const body = token.slice(prefix.length);
      assert.match(body, /^[A-Za-z0-9_-]{43}$/);
      // 43 base64url chars without padding decode to exactly 32 bytes.
      assert.equal(Buffer.from(body, 'base64url').length, 32);
    });
  }

  it('gives a different token on every call', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) seen.add(generateToken('node'));
    assert.equal(seen.size, 1000);
  });

  it('uses the whole alphabet, not a constant-ish body', () => {
    const chars = new Set<string>();
    for (let i = 0; i < 200; i++) for (const ch of generateToken('op').slice('ngc_op_'.length)) chars.add(ch);
    // 200 * 43 random draws from 64 symbols: every symbol shows up with overwhelming probability.
    assert.ok(chars.size >= 60, `only ${chars.size} distinct characters`);
  });
});

describe('hashToken', () => {
  const token = generateToken('cluster');

  it('is deterministic for the same secret and token', () => {
    assert.equal(hashToken(SECRET_A, token), hashToken(SECRET_A, token));
  });

  it('is a 64-char hex HMAC-SHA256 digest', () => {
    assert.match(hashToken(SECRET_A, token), /^[0-9a-f]{64}$/);
  });

  it('differs across secrets', () => {
    assert.notEqual(hashToken(SECRET_A, token), hashToken(SECRET_B, token));
  });

  it('differs across tokens', () => {
    assert.notEqual(hashToken(SECRET_A, token), hashToken(SECRET_A, generateToken('cluster')));
  });

  it('never contains the token or its random body', () => {
    const h = hashToken(SECRET_A, token);
    assert.ok(!h.includes(token));
    assert.ok(!h.includes(token.slice('ngc_cluster_'.length)));
    assert.ok(!h.includes(Buffer.from(token).toString('hex')));
  });
});

describe('hashesEqual', () => {
  const a = hashToken(SECRET_A, 'ngc_op_x');
  const b = hashToken(SECRET_A, 'ngc_op_y');

  it('is true for equal digests', () => {
    assert.equal(hashesEqual(a, a), true);
    assert.equal(hashesEqual(a, String(a)), true);
  });

  it('is false for different digests of the same length', () => {
    assert.equal(hashesEqual(a, b), false);
  });

  it('is false when one character differs', () => {
    const flipped = a.slice(0, -1) + (a.endsWith('0') ? '1' : '0');
    assert.equal(hashesEqual(a, flipped), false);
  });

  it('is false (and does not throw) for different lengths', () => {
    assert.equal(hashesEqual(a, a.slice(0, 32)), false);
    assert.equal(hashesEqual(a.slice(0, 32), a), false);
  });

  it('is false for empty input', () => {
    assert.equal(hashesEqual('', ''), false);
    assert.equal(hashesEqual(a, ''), false);
    assert.equal(hashesEqual('', a), false);
  });
});

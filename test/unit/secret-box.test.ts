import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { open, seal } from '../../server/src/domain/secret-box.js';

const SECRET = 'server-secret-0123456789abcdef0123456789abcdef';
const PURPOSE = 'cluster-ca-key';
const PLAINTEXT = Buffer.from('-----BEGIN NEBULA ED25519 PRIVATE KEY-----\nsupersecretkeymaterial\n-----END NEBULA ED25519 PRIVATE KEY-----\n');

describe('secret-box', () => {
  it('round-trips seal/open', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    assert.deepEqual(open(SECRET, PURPOSE, sealed), PLAINTEXT);
  });

  it('round-trips an empty plaintext', () => {
    assert.deepEqual(open(SECRET, PURPOSE, seal(SECRET, PURPOSE, Buffer.alloc(0))), Buffer.alloc(0));
  });

  it('uses a fresh IV: sealing twice gives different output', () => {
    assert.notDeepEqual(seal(SECRET, PURPOSE, PLAINTEXT), seal(SECRET, PURPOSE, PLAINTEXT));
  });

  it('fails when any single byte is tampered with', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    for (let i = 0; i < sealed.length; i++) {
      const bad = Buffer.from(sealed);
      bad[i] = bad[i]! ^ 0x01;
      assert.throws(() => open(SECRET, PURPOSE, bad), Error, `tampering byte ${i} went unnoticed`);
    }
  });

  it('fails when truncated or extended', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    assert.throws(() => open(SECRET, PURPOSE, sealed.subarray(0, sealed.length - 1)));
    assert.throws(() => open(SECRET, PURPOSE, Buffer.concat([sealed, Buffer.from([0])])));
    assert.throws(() => open(SECRET, PURPOSE, sealed.subarray(0, 10)), /unknown format/);
  });

  it('fails with the wrong secret', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    assert.throws(() => open(`${SECRET}x`, PURPOSE, sealed));
  });

  it('fails with the wrong purpose', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    assert.throws(() => open(SECRET, 'other-purpose', sealed));
  });

  it('does not contain the plaintext (or a recognisable part of it)', () => {
    const sealed = seal(SECRET, PURPOSE, PLAINTEXT);
    assert.equal(sealed.indexOf(PLAINTEXT), -1);
    assert.equal(sealed.indexOf(Buffer.from('supersecretkeymaterial')), -1);
    assert.equal(sealed.indexOf(Buffer.from('PRIVATE KEY')), -1);
    // version byte + 12-byte IV + 16-byte tag + ciphertext of the same length as the plaintext
    assert.equal(sealed.length, 1 + 12 + 16 + PLAINTEXT.length);
  });
});

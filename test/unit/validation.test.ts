import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import { DomainError } from '../../server/src/domain/errors.js';
import {
  cidrContains,
  clusterCreateSchema,
  enrollSchema,
  groupsSchema,
  lighthouseAssignSchema,
  mtuSchema,
  nameSchema,
  nodeCreateSchema,
  nodeUpdateSchema,
  overlayCidrSchema,
  overlayIpSchema,
  parseInput,
  portSchema,
  publicIpSchema,
  relayAssignSchema,
  routesReplaceSchema,
  routesSchema,
  tenantCreateSchema,
} from '../../server/src/domain/validation.js';

const ok = (schema: { safeParse(v: unknown): { success: boolean } }, v: unknown): boolean => schema.safeParse(v).success;

describe('nameSchema', () => {
  it('accepts letters, digits, dot, underscore and dash starting with a letter or digit', () => {
    for (const n of ['a', 'acme', 'Acme-1', 'node_01', 'n.example.com', '0abc', 'x'.repeat(64)]) assert.ok(ok(nameSchema, n), n);
  });
  it('rejects empty, too long, bad start and bad characters', () => {
    for (const n of ['', 'x'.repeat(65), '-a', '.a', '_a', 'a b', 'a/b', 'a\\b', 'ä', 'a;drop', '../x', 'a\n'])
      assert.ok(!ok(nameSchema, n), JSON.stringify(n));
  });
  it('rejects non-strings', () => {
    assert.ok(!ok(nameSchema, 1));
    assert.ok(!ok(nameSchema, null));
  });
});

describe('mtuSchema', () => {
  it('accepts the bounds 1280 and 9000 and values between', () => {
    for (const v of [1280, 1300, 1500, 9000]) assert.ok(ok(mtuSchema, v), String(v));
  });
  it('rejects values outside the bounds, fractions and strings', () => {
    for (const v of [1279, 9001, 0, -1, 99, 1400.5, '1400', NaN, Infinity]) assert.ok(!ok(mtuSchema, v), String(v));
  });
});

describe('portSchema', () => {
  it('accepts 1..65535 only', () => {
    assert.ok(ok(portSchema, 1));
    assert.ok(ok(portSchema, 65535));
    assert.ok(!ok(portSchema, 0));
    assert.ok(!ok(portSchema, 65536));
    assert.ok(!ok(portSchema, 4242.5));
  });
});

describe('routesSchema (CIDR v4)', () => {
  it('accepts IPv4 CIDRs', () => {
    assert.ok(ok(routesSchema, []));
    assert.ok(ok(routesSchema, ['10.1.0.0/16', '192.168.0.0/24', '0.0.0.0/0', '10.0.0.1/32']));
  });
  it('rejects bare IPs, bad prefixes, bad octets, IPv6 and garbage', () => {
    for (const r of ['10.1.0.0', '10.1.0.0/33', '10.1.0.0/-1', '256.1.0.0/16', '10.1.0/16', 'fd00::/8', 'nonsense', ''])
      assert.ok(!ok(routesSchema, [r]), r);
  });
  it('rejects more than 256 routes', () => {
    const many = Array.from({ length: 257 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
    assert.ok(ok(routesSchema, many.slice(0, 256)));
    assert.ok(!ok(routesSchema, many));
  });
});

describe('IP schemas', () => {
  it('overlay IP is IPv4 only', () => {
    assert.ok(ok(overlayIpSchema, '10.42.0.1'));
    for (const v of ['10.42.0.256', '10.42.0', 'fd00::1', '10.42.0.1/24', 'localhost', '']) assert.ok(!ok(overlayIpSchema, v), v);
  });
  it('public IP is IPv4 or IPv6', () => {
    for (const v of ['203.0.113.7', '2001:db8::1', '::1']) assert.ok(ok(publicIpSchema, v), v);
    for (const v of ['203.0.113.300', 'example.com', '2001:db8:::1', '']) assert.ok(!ok(publicIpSchema, v), v);
  });
});

describe('strict objects reject unknown keys', () => {
  const id = randomUUID();
  const cases: [string, { safeParse(v: unknown): { success: boolean } }, Record<string, unknown>][] = [
    ['tenantCreateSchema', tenantCreateSchema, { name: 'acme' }],
    ['clusterCreateSchema', clusterCreateSchema, { tenant_id: id, name: 'c1' }],
    ['nodeCreateSchema', nodeCreateSchema, { name: 'n1' }],
    ['nodeUpdateSchema', nodeUpdateSchema, { mtu: 1400 }],
    ['routesReplaceSchema', routesReplaceSchema, { routes: ['10.0.0.0/8'] }],
    ['lighthouseAssignSchema', lighthouseAssignSchema, { node_id: id, public_ip: '203.0.113.1' }],
    ['relayAssignSchema', relayAssignSchema, { node_id: id }],
  ];
  for (const [label, schema, valid] of cases) {
    it(label, () => {
      assert.ok(ok(schema, valid), 'the valid base input should pass');
      assert.ok(!ok(schema, { ...valid, surprise: 1 }), 'an unknown key should fail');
    });
  }
  it('a misspelt field is an error, not ignored', () => {
    assert.ok(!ok(nodeCreateSchema, { name: 'n1', mtus: 1400 }));
  });
});

describe('clusterCreateSchema', () => {
  const base = { tenant_id: randomUUID(), name: 'c1' };
  it('requires a UUID tenant_id', () => {
    assert.ok(!ok(clusterCreateSchema, { ...base, tenant_id: 'not-a-uuid' }));
    assert.ok(!ok(clusterCreateSchema, { name: 'c1' }));
  });
  it('requires ca_cert and ca_key together', () => {
    assert.ok(ok(clusterCreateSchema, { ...base, ca_cert: 'CERT', ca_key: 'KEY' }));
    assert.ok(!ok(clusterCreateSchema, { ...base, ca_cert: 'CERT' }));
    assert.ok(!ok(clusterCreateSchema, { ...base, ca_key: 'KEY' }));
  });
  it('names ca_key in the error when ca_cert comes alone', () => {
    assert.throws(
      () => parseInput(clusterCreateSchema, { ...base, ca_cert: 'CERT' }),
      (err: unknown) => err instanceof DomainError && /^ca_key: /.test(err.message) && /go together/.test(err.message),
    );
  });
  it('accepts an optional lighthouse_port within range', () => {
    assert.ok(ok(clusterCreateSchema, { ...base, lighthouse_port: 4242 }));
    assert.ok(!ok(clusterCreateSchema, { ...base, lighthouse_port: 70000 }));
  });
});

describe('nodeUpdateSchema', () => {
  it('rejects an empty update', () => {
    assert.ok(!ok(nodeUpdateSchema, {}));
    assert.throws(() => parseInput(nodeUpdateSchema, {}), /nothing to update/);
  });
  it('accepts null to clear overlay_ip and public_ip', () => {
    assert.ok(ok(nodeUpdateSchema, { overlay_ip: null }));
    assert.ok(ok(nodeUpdateSchema, { public_ip: null }));
  });
  it('still validates the fields it gets', () => {
    assert.ok(!ok(nodeUpdateSchema, { mtu: 1279 }));
    assert.ok(!ok(nodeUpdateSchema, { name: '' }));
  });
});

describe('parseInput', () => {
  it('returns the parsed value', () => {
    assert.deepEqual(parseInput(nodeCreateSchema, { name: 'n1', mtu: 1400 }), { name: 'n1', mtu: 1400 });
  });
  it('throws VALIDATION_FAILED naming the field', () => {
    assert.throws(
      () => parseInput(nodeCreateSchema, { name: 'n1', mtu: 99 }),
      (err: unknown) => err instanceof DomainError && err.code === 'VALIDATION_FAILED' && err.message.startsWith('mtu: '),
    );
  });
  it('names a nested field by its path', () => {
    assert.throws(
      () => parseInput(nodeCreateSchema, { name: 'n1', routes: ['10.0.0.0/8', 'bogus'] }),
      (err: unknown) => err instanceof DomainError && err.message.startsWith('routes.1: '),
    );
  });
  it('names the field of an invalid name', () => {
    assert.throws(
      () => parseInput(tenantCreateSchema, { name: 'bad name' }),
      (err: unknown) => err instanceof DomainError && err.message.startsWith('name: '),
    );
  });
});

describe('PKI fields', () => {
  it('overlay_cidr is an IPv4 network address, /8 to /30', () => {
    for (const v of ['10.42.0.0/16', '100.64.0.0/10', '192.168.7.0/24', '10.0.0.4/30', '10.0.0.0/8']) assert.ok(ok(overlayCidrSchema, v), v);
    for (const v of ['10.42.0.1/16', '10.0.0.0/7', '10.0.0.0/31', '10.0.0.0', 'fd00::/64', 'x']) assert.ok(!ok(overlayCidrSchema, v), v);
    assert.ok(ok(clusterCreateSchema, { tenant_id: randomUUID(), name: 'c', overlay_cidr: '10.50.0.0/16' }));
  });

  it('cidrContains', () => {
    assert.equal(cidrContains('10.42.0.0/16', '10.42.255.254'), true);
    assert.equal(cidrContains('10.42.0.0/16', '10.43.0.1'), false);
    assert.equal(cidrContains('192.168.7.0/24', '192.168.7.9'), true);
    assert.equal(cidrContains('192.168.7.0/24', '192.168.8.9'), false);
  });

  it('groups are unique names without commas or spaces, at most 32', () => {
    assert.ok(ok(groupsSchema, ['web', 'prod.eu', 'team:ops', 'a@b']));
    for (const g of [['a,b'], ['a b'], [''], ['-x'], ['a', 'a'], Array.from({ length: 33 }, (_, i) => `g${i}`)]) {
      assert.ok(!ok(groupsSchema, g), JSON.stringify(g));
    }
    assert.ok(ok(nodeCreateSchema, { name: 'n', groups: ['web'] }));
    assert.ok(ok(nodeUpdateSchema, { groups: [] }));
  });

  it('enrollment takes a Nebula X25519 public key and refuses a private key by name', () => {
    const pub = '-----BEGIN NEBULA X25519 PUBLIC KEY-----\nB+XU8AsLwuR1Y4EvxNpkrLGL+DVO8u8Yc63qp9l/YCg=\n-----END NEBULA X25519 PUBLIC KEY-----\n';
    assert.ok(ok(enrollSchema, { public_key: pub }));
    const priv = pub.replaceAll('PUBLIC', 'PRIVATE');
    assert.throws(() => parseInput(enrollSchema, { public_key: priv }), /private key must never leave its host/);
    for (const v of [{}, { public_key: '' }, { public_key: 'x' }, { public_key: pub, extra: 1 }]) assert.ok(!ok(enrollSchema, v), JSON.stringify(v));
  });
});

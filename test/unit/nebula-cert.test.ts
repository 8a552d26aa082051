import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DomainError } from '../../server/src/domain/errors.js';
import { NebulaCert, NebulaCertError } from '../../server/src/domain/nebula-cert.js';
import { NebulaHost } from '../helpers/nebula.js';

/** The wrapper around the real nebula-cert binary (Debian's nebula package). */
describe('NebulaCert', () => {
  let tmpRoot: string;
  let host: NebulaHost;
  let tool: NebulaCert;
  let ca: { cert: string; key: string };

  before(async () => {
    tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-nc-test-'));
    host = new NebulaHost();
    tool = new NebulaCert({ bin: 'nebula-cert', tmpRoot });
    ca = await tool.createCa({ name: 'unit ca', durationS: 48 * 3600, ips: ['10.42.0.0/16'] });
  });
  after(() => {
    host.cleanup();
    rmSync(tmpRoot, { recursive: true, force: true });
  });

  const leftovers = (): string[] => readdirSync(tmpRoot);

  it('reports its version', async () => {
    assert.match(await tool.version(), /^\d+\.\d+\.\d+/);
  });

  it('creates a CA limited to the overlay network, and leaves no files behind', async () => {
    assert.match(ca.cert, /^-----BEGIN NEBULA CERTIFICATE-----/);
    assert.match(ca.key, /^-----BEGIN NEBULA ED25519 PRIVATE KEY-----/);
    const info = await tool.print(ca.cert);
    assert.equal(info.isCa, true);
    assert.equal(info.name, 'unit ca');
    assert.deepEqual(info.ips, ['10.42.0.0/16']);
    assert.equal(info.fingerprint, host.print(ca.cert).fingerprint);
    const hours = (Date.parse(info.notAfter) - Date.parse(info.notBefore)) / 3_600_000;
    assert.ok(Math.abs(hours - 48) < 0.01, `CA lasts ${hours} h`);
    assert.deepEqual(leftovers(), []);
  });

  it('signs a host certificate from a public key made on the host', async () => {
    const { publicKey } = host.keygen('signed');
    const cert = await tool.signHost({
      caCert: ca.cert,
      caKey: ca.key,
      publicKey,
      name: 'web-1',
      ip: '10.42.3.4/16',
      groups: ['web', 'prod'],
      subnets: ['192.168.50.0/24'],
      durationS: 3600,
    });
    assert.equal(host.verify(ca.cert, cert).status, 0);
    const printed = host.print(cert);
    assert.equal(printed.details.name, 'web-1');
    assert.deepEqual(printed.details.ips, ['10.42.3.4/16']);
    assert.deepEqual(printed.details.groups, ['web', 'prod']);
    assert.deepEqual(printed.details.subnets, ['192.168.50.0/24']);
    const info = await tool.print(cert);
    assert.equal(info.fingerprint, printed.fingerprint);
    assert.equal(info.issuer, (await tool.print(ca.cert)).fingerprint);
    assert.equal(info.isCa, false);
    assert.ok(Math.abs(Date.parse(info.notAfter) - Date.parse(info.notBefore) - 3_600_000) < 2000);
    assert.deepEqual(await tool.verify(ca.cert, cert), { valid: true });
    assert.deepEqual(leftovers(), []);
  });

  it('with duration 0 signs until just before the CA expires', async () => {
    const cert = await tool.signHost({ caCert: ca.cert, caKey: ca.key, publicKey: host.keygen('forever').publicKey, name: 'h', ip: '10.42.0.9/16', groups: [], subnets: [], durationS: 0 });
    const [caInfo, info] = [await tool.print(ca.cert), await tool.print(cert)];
    assert.equal(Date.parse(caInfo.notAfter) - Date.parse(info.notAfter), 1000);
  });

  it('says why a certificate does not verify against another CA', async () => {
    const other = await tool.createCa({ name: 'other', durationS: 3600, ips: [] });
    const cert = await tool.signHost({ caCert: ca.cert, caKey: ca.key, publicKey: host.keygen('x').publicKey, name: 'h', ip: '10.42.0.10/16', groups: [], subnets: [], durationS: 60 });
    const r = await tool.verify(other.cert, cert);
    assert.equal(r.valid, false);
    assert.match((r as { reason: string }).reason, /could not find ca/i);
  });

  it('refuses a bad public key, an IP outside the CA and a mismatched key with NebulaCertError, and still cleans up', async () => {
    const base = { caCert: ca.cert, caKey: ca.key, name: 'h', groups: [], subnets: [], durationS: 60 };
    const { publicKey, privateKey } = host.keygen('bad');
    await assert.rejects(tool.signHost({ ...base, publicKey: privateKey, ip: '10.42.0.11/16' }), (e: unknown) => e instanceof NebulaCertError && /in-pub/.test(e.message));
    await assert.rejects(tool.signHost({ ...base, publicKey, ip: '10.43.0.11/16' }), (e: unknown) => e instanceof NebulaCertError && /constraints violated/.test(e.message));
    const other = await tool.createCa({ name: 'other', durationS: 3600, ips: [] });
    await assert.rejects(tool.signHost({ ...base, caKey: other.key, publicKey, ip: '10.42.0.11/16' }), /does not match private key/);
    await assert.rejects(tool.print('not a certificate'), NebulaCertError);
    assert.deepEqual(leftovers(), []);
  });

  it('answers PKI_UNAVAILABLE when the binary is missing', async () => {
    const missing = new NebulaCert({ bin: '/nonexistent/nebula-cert', tmpRoot });
    for (const p of [missing.version(), missing.createCa({ name: 'x', durationS: 60, ips: [] })]) {
      await assert.rejects(p, (e: unknown) => e instanceof DomainError && e.code === 'PKI_UNAVAILABLE' && /NEBULAGC_NEBULA_CERT_BIN/.test(e.message));
    }
    assert.deepEqual(leftovers(), []);
  });

  it('passes keys through private 0600 files in a 0700 dir, never on the command line', async () => {
    const spy = path.join(tmpRoot, '..', `nebula-cert-spy-${process.pid}`);
    const log = `${spy}.log`;
    writeFileSync(spy, `#!/bin/sh\n{ echo "ARGS $*"; stat -c 'MODE %a %n' . *; } >> '${log}'\nexec nebula-cert "$@"\n`);
    chmodSync(spy, 0o755);
    try {
      const spied = new NebulaCert({ bin: spy, tmpRoot });
      const own = await spied.createCa({ name: 'spied', durationS: 3600, ips: [] });
      const { publicKey } = host.keygen('spied');
      await spied.signHost({ caCert: own.cert, caKey: own.key, publicKey, name: 'h', ip: '10.0.0.1/8', groups: [], subnets: [], durationS: 60 });
      const text = readFileSync(log, 'utf8');
      const keyBody = own.key.split('\n')[1]!;
      assert.equal(text.includes(keyBody), false, 'CA key material on a command line');
      assert.match(text, /MODE 700 \.$/m);
      for (const f of ['ca.crt', 'ca.key', 'host.pub']) assert.match(text, new RegExp(`MODE 600 ${f.replace('.', '\\.')}$`, 'm'));
      assert.deepEqual(leftovers(), []);
    } finally {
      rmSync(spy, { force: true });
      rmSync(log, { force: true });
    }
  });
});

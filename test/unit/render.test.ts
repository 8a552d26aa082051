import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import YAML from 'yaml';
import { configYaml, packNodeBundle, renderNode } from '../../server/src/domain/render/bundle.js';
import { mergeInto, viewCluster, type ClusterRenderInputs, type RenderNode } from '../../server/src/domain/render/config.js';
import { DEFAULT_TEMPLATE, templateOf } from '../../server/src/domain/render/template.js';
import { backfillTemplateText } from '../../server/src/domain/render/template-backfill.js';
import { loadCluster } from '../../server/src/domain/render/versions.js';
import { createLogger } from '../../server/src/log.js';
import { Writable } from 'node:stream';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStore } from '../../server/src/db/open-store.js';
import { renderUnrenderedNodes } from '../../server/src/domain/render/versions.js';
import { DeadlineHeap } from '../../server/src/http/blocking/deadline-heap.js';
import { holdMs } from '../../server/src/http/blocking/wait-param.js';
import { tarEntries, validBundle } from '../helpers/bundle.js';

const node = (id: string, ip: string, extra: Partial<RenderNode> = {}): RenderNode => ({
  id,
  overlay_ip: ip,
  mtu: 1300,
  routes: [],
  is_lighthouse: false,
  public_ip: null,
  lighthouse_port: null,
  is_relay: false,
  ...extra,
});

const inputs = (nodes: RenderNode[], extra: Partial<ClusterRenderInputs> = {}): ClusterRenderInputs => ({
  template: DEFAULT_TEMPLATE,
  lighthousePort: 4242,
  blocklist: [],
  nodes,
  builtinLighthouses: [],
  ...extra,
});

describe('renderer', () => {
  const nodes = [
    node('a', '10.0.0.1', { is_lighthouse: true, public_ip: '192.0.2.1' }),
    node('b', '10.0.0.2', { is_relay: true }),
    node('c', '10.0.0.3', { routes: ['172.16.0.0/24'], mtu: 1400 }),
  ];

  it('is deterministic: node order, blocklist order and repeated calls give the same bytes', async () => {
    const one = viewCluster(inputs(nodes, { blocklist: ['ff', 'aa'] }));
    const two = viewCluster(inputs([...nodes].reverse(), { blocklist: ['aa', 'ff', 'aa'] }));
    const a = renderNode(one, nodes[2]!, 'CA', 'CERT');
    const b = renderNode(two, nodes[2]!, 'CA', 'CERT');
    assert.equal(a.contentHash, b.contentHash);
    assert.deepEqual((await packNodeBundle({ ...a, caCert: 'CA', hostCert: 'CERT' })).body, (await packNodeBundle({ ...b, caCert: 'CA', hostCert: 'CERT' })).body);
    assert.deepEqual(a.config.pki, { ca: 'ca.crt', cert: 'host.crt', key: 'host.key', blocklist: ['aa', 'ff'] });
  });

  it('the content hash covers the config, the CA and the certificate', () => {
    const v = viewCluster(inputs(nodes));
    const base = renderNode(v, nodes[1]!, 'CA', 'CERT').contentHash;
    assert.notEqual(renderNode(v, nodes[1]!, 'CA2', 'CERT').contentHash, base);
    assert.notEqual(renderNode(v, nodes[1]!, 'CA', 'CERT2').contentHash, base);
    assert.notEqual(renderNode(v, nodes[1]!, 'CA', null).contentHash, base);
    assert.notEqual(renderNode(v, { ...nodes[1]!, mtu: 1500 }, 'CA', 'CERT').contentHash, base);
  });

  it('lists lighthouses (nodes and built-in) except itself, with their ports', () => {
    const v = viewCluster(
      inputs(nodes, { builtinLighthouses: [{ overlay_ip: '10.0.0.250', public_host: '2001:db8::1', port: 5000 }] }),
    );
    const lh = renderNode(v, nodes[0]!, 'CA', 'CERT').config as any;
    assert.deepEqual(lh.static_host_map, { '10.0.0.250': ['[2001:db8::1]:5000'] });
    assert.deepEqual(lh.lighthouse, { ...DEFAULT_TEMPLATE.lighthouse as object, am_lighthouse: true, hosts: ['10.0.0.250'] });
    assert.equal(lh.listen.port, 4242);
    const plain = renderNode(v, nodes[1]!, 'CA', 'CERT').config as any;
    assert.deepEqual(plain.lighthouse.hosts, ['10.0.0.1', '10.0.0.250']);
    assert.equal(plain.listen.port, 0, 'only lighthouses get a fixed port');
  });

  it('routes of other nodes become unsafe_routes with this node’s MTU', () => {
    const v = viewCluster(inputs(nodes));
    const b = renderNode(v, nodes[1]!, 'CA', 'CERT').config as any;
    assert.deepEqual(b.tun.unsafe_routes, [{ route: '172.16.0.0/24', via: '10.0.0.3', mtu: 1300 }]);
    assert.deepEqual(b.relay, { am_relay: true, use_relays: true, relays: [] });
    const c = renderNode(v, nodes[2]!, 'CA', 'CERT').config as any;
    assert.deepEqual(c.tun.unsafe_routes, []);
    assert.equal(c.tun.mtu, 1400);
    assert.deepEqual(c.relay.relays, ['10.0.0.2']);
  });

  it('merges maps key by key; rendered values and lists win', () => {
    const merged = mergeInto({ a: { x: 1, y: [1, 2] }, b: 'keep', c: { deep: { z: 1 } } }, { a: { y: [3] }, c: { deep: { w: 2 } } });
    assert.deepEqual(merged, { a: { x: 1, y: [3] }, b: 'keep', c: { deep: { z: 1, w: 2 } } });
  });

  it('writes YAML that reads back to the same config, with sorted keys', () => {
    const config = renderNode(viewCluster(inputs(nodes)), nodes[1]!, 'CA', 'CERT').config;
    const yaml = configYaml(config);
    assert.deepEqual(YAML.parse(yaml), config);
    const top = yaml.split('\n').filter((l) => /^[a-z_]+:/.test(l)).map((l) => l.split(':')[0]);
    assert.deepEqual(top, [...top].sort());
  });
});


describe('node bundle archive', () => {
  const config = { tun: { mtu: 1300 }, pki: { ca: 'ca.crt' } };
  const caCert = 'C'.repeat(1000);

  it('holds config.yml, ca.crt and host.crt in that order, with pinned headers', async () => {
    const { body, sha256 } = await packNodeBundle({ config, caCert, hostCert: 'HOST' });
    const entries = await tarEntries(body);
    assert.deepEqual(entries.map((e) => e.header.name), ['config.yml', 'ca.crt', 'host.crt']);
    assert.equal(entries[0]!.content.toString(), configYaml(config));
    assert.equal(entries[1]!.content.toString(), caCert);
    assert.equal(entries[2]!.content.toString(), 'HOST');
    for (const { header } of entries) {
      assert.equal(header.type, 'file');
      assert.equal(header.mode, 0o644);
      assert.equal(header.mtime!.getTime(), 0);
      assert.equal(header.uid, 0);
      assert.equal(header.gid, 0);
      assert.equal(header.uname, '');
      assert.equal(header.gname, '');
    }
    assert.equal(sha256, createHash('sha256').update(body).digest('hex'));
  });

  it('is byte-for-byte reproducible, and differs when any file does', async () => {
    const a = await packNodeBundle({ config, caCert, hostCert: 'HOST' });
    const b = await packNodeBundle({ config: { pki: { ca: 'ca.crt' }, tun: { mtu: 1300 } }, caCert, hostCert: 'HOST' });
    assert.deepEqual(a.body, b.body, 'key order does not reach the archive');
    assert.notEqual((await packNodeBundle({ config, caCert, hostCert: 'HOST2' })).sha256, a.sha256);
    assert.notEqual((await packNodeBundle({ config: { ...config, tun: { mtu: 1400 } }, caCert, hostCert: 'HOST' })).sha256, a.sha256);
  });
});

describe('template cache', () => {
  it('parses a bundle version once', () => {
    let loads = 0;
    const source = { clusterId: 'c-cache', bundleVersion: 1, sha256: 'h', load: () => (loads++, 'tun:\n  dev: x\n') };
    const first = templateOf(source);
    const second = templateOf(source);
    assert.equal(loads, 1);
    assert.equal(first, second);
    assert.deepEqual(first, { tun: { dev: 'x' } });
    assert.throws(() => ((first.tun as Record<string, unknown>).dev = 'y'), 'the cached template is frozen');
    templateOf({ ...source, bundleVersion: 2 });
    assert.equal(loads, 2);
    assert.equal(templateOf(undefined), DEFAULT_TEMPLATE);
    assert.equal(templateOf({ ...source, bundleVersion: 3, load: () => '' }), DEFAULT_TEMPLATE, 'an empty text renders as the built-in template');
  });

  it('refuses to render from a template not backfilled yet, and does not remember the miss', () => {
    const source = { clusterId: 'c-pending', bundleVersion: 1, sha256: 'h', load: (): string | null => null };
    assert.throws(() => templateOf(source), (err: { code?: string }) => err.code === 'NOT_READY');
    assert.deepEqual(templateOf({ ...source, load: () => 'a: 1\n' }), { a: 1 });
  });
});

describe('blocking poll helpers', () => {
  it('holdMs caps the wait and adds at most wait/16 of jitter', () => {
    assert.equal(holdMs(1600, 300_000, () => 0), 1600);
    assert.equal(holdMs(1600, 300_000, () => 0.999), 1699);
    assert.equal(holdMs(600_000, 300_000, () => 0), 300_000);
    assert.equal(holdMs(undefined, 300_000, () => 0), 300_000);
  });

  it('DeadlineHeap pops in deadline order and removes any member', () => {
    const heap = new DeadlineHeap<{ deadline: number; heapIndex: number }>();
    const items = [5, 1, 9, 3, 7, 2, 8].map((deadline) => ({ deadline, heapIndex: -1 }));
    for (const i of items) heap.push(i);
    heap.remove(items[3]!);
    heap.remove(items[3]!);
    const out: number[] = [];
    for (let i = heap.pop(); i; i = heap.pop()) out.push(i.deadline);
    assert.deepEqual(out, [1, 2, 5, 7, 8, 9]);
    assert.equal(heap.size, 0);
  });
});

describe('render YAML', () => {
  it('reads back to the same value, tricky strings included', () => {
    const value = {
      plain: 'nebula1',
      words: ['yes', 'No', 'on', 'OFF', 'true', 'null', '~', 'y', ''],
      numbers: { int: 1300, neg: -1, float: 1.5, zero: 0 },
      looks_like_numbers: ['10.42.0.1', '1e3', '0x10', '0777', '12:30'],
      quoting: ['a: b', '#c', 'd #e', '- f', '"g"', "'h'", 'i\nj', 'tab\there', 'ü', '*alias', '&anchor', '!tag', '%x', '@at', '`tick', '{x}', '[y]', ' pad '],
      bools: [true, false],
      nothing: null,
      empty_map: {},
      empty_list: [],
      list_of_maps: [{ port: 'any', proto: 'icmp', host: 'any' }, { port: 22, groups: ['a', 'b'] }],
      list_of_lists: [[1, 2], [], ['x']],
      'odd key: yes': { '10.42.0.1': ['192.0.2.1:4242'] },
      deep: { a: { b: { c: [{ d: { e: 'f' } }] } } },
    };
    assert.deepEqual(YAML.parse(configYaml(value)), value);
    assert.deepEqual(YAML.parse(configYaml(value), { version: '1.1' }), value, 'as a YAML 1.1 reader (go-yaml) sees it');
  });
});

describe('render versions', () => {
  it('gives nodes from before per-node versions a version at start, once', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-render-'));
    const opened = openStore({ dbPath: path.join(dir, 'db'), synchronous: 'NORMAL', secret: 'x'.repeat(32) });
    try {
      const { store } = opened;
      store.writer.write('seed', (db) => {
        db.prepare("INSERT INTO tenants (id, name, created_at, updated_at) VALUES ('t', 't', 'x', 'x')").run();
        db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, created_at, updated_at) VALUES ('c', 't', 'c', 'h', 'x', 'x')").run();
        for (const [id, ip] of [['a', '10.42.0.1'], ['b', '10.42.0.2']]) {
          db.prepare("INSERT INTO nodes (id, cluster_id, name, token_hash, overlay_ip, created_at, updated_at) VALUES (?, 'c', ?, ?, ?, 'x', 'x')").run(id, id, `h-${id}`, ip);
        }
      });
      assert.equal(renderUnrenderedNodes(store), 2);
      const rows = store.reader.prepare('SELECT config_index, config_sha256 FROM nodes ORDER BY id').all() as { config_index: number; config_sha256: string }[];
      assert.ok(rows.every((r) => r.config_index > 0 && /^[0-9a-f]{64}$/.test(r.config_sha256)));
      assert.equal(rows[0]!.config_index, rows[1]!.config_index, 'one write, one index');
      assert.equal(renderUnrenderedNodes(store), 0);
    } finally {
      opened.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('backfills the config.yml text of bundles stored before it was kept, once, and renders from it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-render-'));
    const opened = openStore({ dbPath: path.join(dir, 'db'), synchronous: 'NORMAL', secret: 'x'.repeat(32) });
    const logged: string[] = [];
    const log = createLogger('info', new Writable({ write: (chunk, _enc, done) => (logged.push(String(chunk)), done()) }));
    try {
      const { store } = opened;
      const data = await validBundle([], 'tun:\n  dev: from-upload\n');
      store.writer.write('seed', (db) => {
        db.prepare("INSERT INTO tenants (id, name, created_at, updated_at) VALUES ('t', 't', 'x', 'x')").run();
        db.prepare("INSERT INTO clusters (id, tenant_id, name, token_hash, current_bundle_version, created_at, updated_at) VALUES ('c', 't', 'c', 'h', 1, 'x', 'x')").run();
        const insert = db.prepare("INSERT INTO config_bundles (cluster_id, version, data, sha256, size_bytes, created_by, created_at) VALUES ('c', ?, ?, ?, ?, 'old', 'x')");
        insert.run(1, data, 'sha-1', data.length);
        insert.run(2, Buffer.from('not a tar.gz'), 'sha-2', 12);
      });
      assert.throws(() => loadCluster(store.reader, 'c'), (err: { code?: string }) => err.code === 'NOT_READY');
      assert.equal(await backfillTemplateText(store, log), 2);
      const text = store.reader.prepare('SELECT version, config_yml FROM config_bundles ORDER BY version').all();
      assert.deepEqual(text, [{ version: 1, config_yml: 'tun:\n  dev: from-upload\n' }, { version: 2, config_yml: '' }]);
      assert.match(logged.join(''), /cannot be read/);
      assert.equal((loadCluster(store.reader, 'c')!.view.inputs.template.tun as { dev: string }).dev, 'from-upload');
      assert.equal(await backfillTemplateText(store, log), 0);
    } finally {
      opened.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

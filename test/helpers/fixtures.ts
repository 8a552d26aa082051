import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { call, type TestServer } from './server.js';

export interface Seeded {
  tenantId: string;
  clusterId: string;
  clusterToken: string;
  admin: { id: string; token: string; headers: Record<string, string> };
  node: { id: string; token: string; headers: Record<string, string> };
}

const nodeHeaders = (token: string): Record<string, string> => ({ 'x-nebulagc-node-token': token });

/** A tenant with one cluster, an admin node and a plain node, all created through the API. */
export async function seed(s: TestServer, label = randomUUID().slice(0, 8)): Promise<Seeded> {
  const t = await call(s.url, 'POST', '/api/v1/tenants', { headers: s.op, json: { name: `tenant-${label}` } });
  assert.equal(t.status, 201, JSON.stringify(t.body));
  const c = await call(s.url, 'POST', '/api/v1/clusters', {
    headers: s.op,
    json: { tenant_id: t.body.id, name: `cluster-${label}` },
  });
  assert.equal(c.status, 201, JSON.stringify(c.body));
  const clusterId = c.body.cluster.id as string;
  const a = await call(s.url, 'POST', '/api/v1/nodes', {
    headers: s.op,
    json: { cluster_id: clusterId, name: 'admin', is_admin: true, overlay_ip: '10.42.0.1' },
  });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  const n = await call(s.url, 'POST', '/api/v1/nodes', {
    headers: s.op,
    json: { cluster_id: clusterId, name: 'host', overlay_ip: '10.42.0.2' },
  });
  assert.equal(n.status, 201, JSON.stringify(n.body));
  return {
    tenantId: t.body.id,
    clusterId,
    clusterToken: c.body.token,
    admin: { id: a.body.node.id, token: a.body.token, headers: nodeHeaders(a.body.token) },
    node: { id: n.body.node.id, token: n.body.token, headers: nodeHeaders(n.body.token) },
  };
}

/** The cluster's config_version as its plain node sees it. */
export async function configVersion(s: TestServer, k: Seeded): Promise<number> {
  return (await call(s.url, 'GET', '/api/v1/config/version', { headers: k.node.headers })).body.config_version;
}

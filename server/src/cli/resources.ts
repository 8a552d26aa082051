import { Command } from 'commander';
import { createClusterWithCa, pkiFrom, rotateClusterCa } from '../domain/cluster-ca.js';
import { listClusters, rotateClusterToken } from '../domain/clusters.js';
import { clusterOfNode, createNode, listNodes, rotateNodeToken } from '../domain/nodes.js';
import { rotateOperatorToken } from '../domain/operator.js';
import { createTenant, listTenants } from '../domain/tenants.js';
import { clusterCreateSchema, nodeCreateSchema, parseInput, tenantCreateSchema } from '../domain/validation.js';
import { intArg, printJson, withDbOptions, withStore, type DbFlags } from './common.js';

const ALL = { limit: 1_000_000, offset: 0 };
const list = (v: string | undefined): string[] | undefined => (v ? v.split(',').map((x) => x.trim()).filter(Boolean) : undefined);

/** tenant, cluster, node and operator commands: the same rules as the API, run on the local database. */
export function resourceCommands(): Command[] {
  const tenant = new Command('tenant').description('manage tenants');
  withDbOptions(tenant.command('create').description('create a tenant').requiredOption('--name <name>', 'tenant name')).action(
    (f: DbFlags & { name: string }) =>
      withStore(f, ({ store }) => printJson(createTenant(store, parseInput(tenantCreateSchema, { name: f.name })))),
  );
  withDbOptions(tenant.command('list').description('list tenants')).action((f: DbFlags) =>
    withStore(f, ({ store }) => printJson(listTenants(store, ALL))),
  );

  const cluster = new Command('cluster').description('manage clusters');
  withDbOptions(
    cluster
      .command('create')
      .description('create a cluster and its Nebula CA (made with nebula-cert); prints its token once')
      .requiredOption('--tenant-id <id>', 'owning tenant')
      .requiredOption('--name <name>', 'cluster name')
      .option('--lighthouse-port <port>', 'UDP port of the lighthouses', intArg('--lighthouse-port'))
      .option('--overlay-cidr <cidr>', 'the Nebula network (default 10.42.0.0/16)'),
  ).action((f: DbFlags & { tenantId: string; name: string; lighthousePort?: number; overlayCidr?: string }) =>
    withStore(f, async ({ store }, config) => {
      const input = parseInput(clusterCreateSchema, {
        tenant_id: f.tenantId,
        name: f.name,
        lighthouse_port: f.lighthousePort,
        overlay_cidr: f.overlayCidr,
      });
      printJson(await createClusterWithCa(store, pkiFrom(config.pki), input));
    }),
  );
  withDbOptions(cluster.command('list').description('list clusters').option('--tenant-id <id>', 'only this tenant’s')).action(
    (f: DbFlags & { tenantId?: string }) => withStore(f, ({ store }) => printJson(listClusters(store, { tenant_id: f.tenantId }, ALL))),
  );
  withDbOptions(
    cluster.command('rotate-ca').description('replace the cluster CA; every node must enroll again').argument('<cluster-id>'),
  ).action((id: string, f: DbFlags) =>
    withStore(f, async ({ store }, config) => printJson(await rotateClusterCa(store, pkiFrom(config.pki), id))),
  );
  withDbOptions(cluster.command('rotate-token').description('replace a cluster token; prints the new one').argument('<cluster-id>')).action(
    (id: string, f: DbFlags) => withStore(f, ({ store }) => printJson({ token: rotateClusterToken(store, id) })),
  );

  const node = new Command('node').description('manage nodes');
  withDbOptions(
    node
      .command('create')
      .description('create a node; prints its token once')
      .requiredOption('--cluster-id <id>', 'owning cluster')
      .requiredOption('--name <name>', 'node name')
      .option('--admin', 'the node may manage its cluster')
      .option('--mtu <mtu>', 'tun MTU (1280-9000)', intArg('--mtu'))
      .option('--overlay-ip <ip>', 'the node’s Nebula IP')
      .option('--routes <cidrs>', 'comma-separated unsafe routes it advertises')
      .option('--groups <names>', 'comma-separated Nebula groups for its certificate'),
  ).action(
    (f: DbFlags & { clusterId: string; name: string; admin?: boolean; mtu?: number; overlayIp?: string; routes?: string; groups?: string }) =>
      withStore(f, ({ store }) => {
        const input = parseInput(nodeCreateSchema, {
          name: f.name,
          is_admin: f.admin ?? false,
          mtu: f.mtu,
          overlay_ip: f.overlayIp,
          routes: list(f.routes),
          groups: list(f.groups),
        });
        printJson(createNode(store, f.clusterId, input));
      }),
  );
  withDbOptions(node.command('list').description('list a cluster’s nodes').requiredOption('--cluster-id <id>', 'the cluster')).action(
    (f: DbFlags & { clusterId: string }) => withStore(f, ({ store }) => printJson(listNodes(store, f.clusterId, {}, ALL))),
  );
  withDbOptions(node.command('rotate-token').description('replace a node token; prints the new one').argument('<node-id>')).action(
    (id: string, f: DbFlags) => withStore(f, ({ store }) => printJson({ token: rotateNodeToken(store, clusterOfNode(store, id), id) })),
  );

  const operator = new Command('operator').description('the operator (admin) token');
  withDbOptions(operator.command('rotate-token').description('replace the operator token; prints the new one')).action((f: DbFlags) =>
    withStore(f, ({ store }) => printJson({ token: rotateOperatorToken(store) })),
  );

  return [tenant, cluster, node, operator];
}

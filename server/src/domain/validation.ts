import { z } from 'zod';
import { invalid } from './errors.js';

/**
 * Field and input schemas shared by the HTTP routes (which also publish them in /openapi.json)
 * and the CLI. Objects are strict, so a misspelt field is an error rather than silently ignored.
 */
export const nameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" and "-", starting with a letter or digit');
export const idSchema = z.uuid();
export const portSchema = z.number().int().min(1).max(65535);
export const mtuSchema = z.number().int().min(1280).max(9000);
export const overlayIpSchema = z.ipv4();
export const publicIpSchema = z.union([z.ipv4(), z.ipv6()]);
export const routesSchema = z.array(z.cidrv4()).max(256);

export const ipv4ToInt = (ip: string): number => ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);

/** Whether an IPv4 address lies inside a CIDR. */
export function cidrContains(cidr: string, ip: string): boolean {
  const [net, bits] = cidr.split('/') as [string, string];
  const size = 2 ** (32 - Number(bits));
  return Math.floor(ipv4ToInt(ip) / size) === Math.floor(ipv4ToInt(net) / size);
}

/** The cluster's Nebula network: host certificates get `<overlay_ip>/<prefix>` from it. */
export const overlayCidrSchema = z
  .cidrv4()
  .refine((v) => {
    const bits = Number(v.split('/')[1]);
    return bits >= 8 && bits <= 30;
  }, 'prefix must be /8 to /30')
  .refine((v) => {
    const [net, bits] = v.split('/') as [string, string];
    return ipv4ToInt(net) % 2 ** (32 - Number(bits)) === 0;
  }, 'must be a network address (host bits zero), e.g. 10.42.0.0/16');

/** Nebula certificate groups (firewall rules match on them); nebula-cert takes them comma-separated. */
export const groupsSchema = z
  .array(z.string().min(1).max(64).regex(/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/, 'letters, digits, ".", "_", ":", "@" and "-"'))
  .max(32)
  .refine((g) => new Set(g).size === g.length, 'groups must not repeat');

export const PRIVATE_KEY_REFUSED = 'a private key must never leave its host: send only the public key (nebula-cert keygen -out-pub)';

export const publicKeySchema = z
  .string()
  .max(1024)
  .refine((v) => !/PRIVATE KEY/.test(v), PRIVATE_KEY_REFUSED)
  .regex(
    /^\s*-----BEGIN NEBULA X25519 PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END NEBULA X25519 PUBLIC KEY-----\s*$/,
    'must be a Nebula X25519 public key in PEM, as written by nebula-cert keygen -out-pub',
  );

export const tenantCreateSchema = z.strictObject({ name: nameSchema });

export const clusterCreateSchema = z
  .strictObject({
    tenant_id: idSchema,
    name: nameSchema,
    lighthouse_port: portSchema.optional(),
    provide_lighthouse: z.boolean().optional(),
    overlay_cidr: overlayCidrSchema.optional(),
    ca_cert: z.string().min(1).max(16384).optional(),
    ca_key: z.string().min(1).max(16384).optional(),
  })
  .refine((v) => (v.ca_cert === undefined) === (v.ca_key === undefined), {
    message: 'ca_cert and ca_key go together',
    path: ['ca_key'],
  });

export const clusterUpdateSchema = z
  .strictObject({
    provide_lighthouse: z.boolean().optional(),
    lighthouse_port: portSchema.optional(),
  })
  .refine((v) => Object.keys(v).length > 0, { message: 'nothing to update' });

export const nodeCreateSchema = z.strictObject({
  cluster_id: idSchema.optional(),
  name: nameSchema,
  is_admin: z.boolean().optional(),
  mtu: mtuSchema.optional(),
  routes: routesSchema.optional(),
  overlay_ip: overlayIpSchema.optional(),
  public_ip: publicIpSchema.optional(),
  groups: groupsSchema.optional(),
});

export const nodeUpdateSchema = z
  .strictObject({
    name: nameSchema.optional(),
    mtu: mtuSchema.optional(),
    routes: routesSchema.optional(),
    overlay_ip: overlayIpSchema.nullable().optional(),
    public_ip: publicIpSchema.nullable().optional(),
    groups: groupsSchema.optional(),
  })
  .refine((v) => Object.keys(v).length > 0, { message: 'nothing to update' });

export const routesReplaceSchema = z.strictObject({ routes: routesSchema });

export const lighthouseAssignSchema = z.strictObject({
  node_id: idSchema,
  public_ip: publicIpSchema,
  port: portSchema.optional(),
});

export const relayAssignSchema = z.strictObject({ node_id: idSchema });

export const enrollSchema = z.strictObject({ public_key: publicKeySchema });

export type TenantCreate = z.infer<typeof tenantCreateSchema>;
export type ClusterCreate = z.infer<typeof clusterCreateSchema>;
export type ClusterUpdate = z.infer<typeof clusterUpdateSchema>;
export type NodeCreate = z.infer<typeof nodeCreateSchema>;
export type NodeUpdate = z.infer<typeof nodeUpdateSchema>;
export type LighthouseAssign = z.infer<typeof lighthouseAssignSchema>;

/** Validates input that did not come through an HTTP route (the CLI), with the same rules. */
export function parseInput<T>(schema: z.ZodType<T>, input: unknown): T {
  const r = schema.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const where = issue.path.length ? `${issue.path.join('.')}: ` : '';
    throw invalid(`${where}${issue.message}`);
  }
  return r.data;
}

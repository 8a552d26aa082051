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

export const tenantCreateSchema = z.strictObject({ name: nameSchema });

export const clusterCreateSchema = z
  .strictObject({
    tenant_id: idSchema,
    name: nameSchema,
    lighthouse_port: portSchema.optional(),
    ca_cert: z.string().min(1).max(16384).optional(),
    ca_key: z.string().min(1).max(16384).optional(),
  })
  .refine((v) => (v.ca_cert === undefined) === (v.ca_key === undefined), {
    message: 'ca_cert and ca_key go together',
    path: ['ca_key'],
  });

export const nodeCreateSchema = z.strictObject({
  cluster_id: idSchema.optional(),
  name: nameSchema,
  is_admin: z.boolean().optional(),
  mtu: mtuSchema.optional(),
  routes: routesSchema.optional(),
  overlay_ip: overlayIpSchema.optional(),
  public_ip: publicIpSchema.optional(),
});

export const nodeUpdateSchema = z
  .strictObject({
    name: nameSchema.optional(),
    mtu: mtuSchema.optional(),
    routes: routesSchema.optional(),
    overlay_ip: overlayIpSchema.nullable().optional(),
    public_ip: publicIpSchema.nullable().optional(),
  })
  .refine((v) => Object.keys(v).length > 0, { message: 'nothing to update' });

export const routesReplaceSchema = z.strictObject({ routes: routesSchema });

export const lighthouseAssignSchema = z.strictObject({
  node_id: idSchema,
  public_ip: publicIpSchema,
  port: portSchema.optional(),
});

export const relayAssignSchema = z.strictObject({ node_id: idSchema });

export type TenantCreate = z.infer<typeof tenantCreateSchema>;
export type ClusterCreate = z.infer<typeof clusterCreateSchema>;
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

import { createRoute, z } from '@hono/zod-openapi';
import { requireOperator } from '../../domain/auth.js';
import { createTenant, deleteTenant, getTenant, listTenants } from '../../domain/tenants.js';
import { tenantCreateSchema } from '../../domain/validation.js';
import type { App, Deps } from '../context.js';
import { errors, idParams, jsonBody, ok, pageQuery, security, tenantSchema } from '../schemas.js';

const tags = ['Tenants'];

export function registerTenantRoutes(app: App, { store }: Deps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/api/v1/tenants',
      tags,
      security,
      summary: 'Create a tenant (operator)',
      request: jsonBody(tenantCreateSchema),
      responses: { 201: ok(tenantSchema, 'Created'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json(createTenant(store, c.req.valid('json')), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/tenants',
      tags,
      security,
      summary: 'List tenants (operator)',
      request: { query: z.object(pageQuery) },
      responses: { 200: ok(z.object({ tenants: z.array(tenantSchema) }), 'Tenants by name'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json({ tenants: listTenants(store, c.req.valid('query')) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/api/v1/tenants/{id}',
      tags,
      security,
      summary: 'Get a tenant (operator)',
      request: { params: idParams },
      responses: { 200: ok(tenantSchema, 'The tenant'), ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      return c.json(getTenant(store, c.req.valid('param').id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/api/v1/tenants/{id}',
      tags,
      security,
      summary: 'Delete a tenant that has no clusters (operator)',
      request: { params: idParams },
      responses: { 204: { description: 'Deleted' }, ...errors },
    }),
    (c) => {
      requireOperator(c.get('principal'));
      deleteTenant(store, c.req.valid('param').id);
      return c.body(null, 204);
    },
  );
}

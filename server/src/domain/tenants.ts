import { stmt } from '../db/connection.js';
import { conflict, notFound, rethrowUnique } from './errors.js';
import { newId, type Page, type Store } from './store.js';
import type { TenantCreate } from './validation.js';

export interface Tenant {
  id: string;
  name: string;
  created_at: string;
  updated_at: string;
}

const COLUMNS = 'id, name, created_at, updated_at';

export function createTenant(store: Store, input: TenantCreate): Tenant {
  const now = store.now();
  const tenant: Tenant = { id: newId(), name: input.name, created_at: now, updated_at: now };
  try {
    store.writer.write('tenant.create', (db) => {
      stmt(db, 'INSERT INTO tenants (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)').run(
        tenant.id,
        tenant.name,
        now,
        now,
      );
    });
  } catch (err) {
    rethrowUnique(err, `a tenant named "${input.name}" already exists`);
  }
  return tenant;
}

export function listTenants(store: Store, page: Page): Tenant[] {
  return stmt(store.reader, `SELECT ${COLUMNS} FROM tenants ORDER BY name LIMIT ? OFFSET ?`)
    .all(page.limit, page.offset) as Tenant[];
}

export function getTenant(store: Store, id: string): Tenant {
  const row = stmt(store.reader, `SELECT ${COLUMNS} FROM tenants WHERE id = ?`).get(id) as Tenant | undefined;
  if (!row) throw notFound('tenant');
  return row;
}

export function deleteTenant(store: Store, id: string): void {
  store.writer.write('tenant.delete', (db) => {
    const clusters = stmt(db, 'SELECT count(*) AS n FROM clusters WHERE tenant_id = ?').get(id) as { n: number };
    if (clusters.n > 0) throw conflict(`tenant still has ${clusters.n} cluster(s); delete them first`);
    if (stmt(db, 'DELETE FROM tenants WHERE id = ?').run(id).changes === 0) throw notFound('tenant');
  });
}

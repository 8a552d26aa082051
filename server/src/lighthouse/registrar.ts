import { registerBuiltinLighthouse, type RegisterRequest } from '../domain/builtin-lighthouses.js';
import type { Pki } from '../domain/cluster-ca.js';
import type { Store } from '../domain/store.js';
import type { InternalClient } from '../replication/wire/internal-client.js';
import { PATHS } from '../replication/wire/protocol.js';

/** Gets this server's lighthouse certificate signed and its row written, wherever writes happen. */
export type Registrar = (req: RegisterRequest) => Promise<void>;

/** On a master or standalone server: sign and write here, through the writer. */
export const localRegistrar =
  (store: Store, pki: Pki): Registrar =>
  async (req) => {
    await registerBuiltinLighthouse(store, pki, req);
  };

/**
 * On a replica: the master signs and writes (a replica has no writer); the row then arrives
 * here by replication like any other change.
 */
export const remoteRegistrar =
  (client: InternalClient): Registrar =>
  async (req) => {
    const r = await client.json('POST', PATHS.lighthouses, req, 20_000);
    if (r.status !== 200) {
      const message = (r.body as { error?: string } | undefined)?.error ?? JSON.stringify(r.body);
      throw new Error(`the master refused the lighthouse registration (${r.status}): ${message}`);
    }
  };

import { stmt } from '../../db/connection.js';
import type { Logger } from '../../log.js';
import { inspectBundle } from '../bundle-archive.js';
import type { Store } from '../store.js';

/**
 * Fills config_bundles.config_yml for bundles stored before the column existed, one bundle at
 * a time, unpacking each with the same code that validated it at upload. Runs where writes
 * happen, at start and before the server listens, so rendering never meets a NULL there;
 * replicas receive the text by replication. Returns how many bundles it filled.
 */
export async function backfillTemplateText(store: Store, log: Logger): Promise<number> {
  const pending = stmt(store.reader, 'SELECT cluster_id, version FROM config_bundles WHERE config_yml IS NULL').all() as {
    cluster_id: string;
    version: number;
  }[];
  let filled = 0;
  for (const { cluster_id, version } of pending) {
    const { data } = stmt(store.reader, 'SELECT data FROM config_bundles WHERE cluster_id = ? AND version = ?').get(cluster_id, version) as {
      data: Buffer;
    };
    let text: string;
    try {
      // It passed inspection when uploaded; limits lowered since must not make it unreadable.
      text = (await inspectBundle(data, { maxBytes: data.length, maxUnpackedBytes: Number.MAX_SAFE_INTEGER, maxEntries: Number.MAX_SAFE_INTEGER }))
        .configYml;
    } catch (err) {
      // The old renderer fell back to the built-in template for a bundle it could not read; the
      // empty text keeps that behaviour, and the row is not retried at every start.
      log.error({ cluster_id, version, err: (err as Error).message }, 'stored bundle cannot be read; its nodes render from the built-in template');
      text = '';
    }
    store.writer.write('bundle.backfill-template', (db) => {
      stmt(db, 'UPDATE config_bundles SET config_yml = ? WHERE cluster_id = ? AND version = ? AND config_yml IS NULL').run(text, cluster_id, version);
    });
    filled++;
  }
  return filled;
}

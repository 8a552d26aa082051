import { Command } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { defaultBundleLimits, inspectBundle } from '../domain/bundle-archive.js';
import { loadConfig } from '../config.js';
import { checksumCommand } from './replication.js';
import { intArg, printJson, withDbOptions, withStore, type DbFlags } from './common.js';

/** migrate, db check|compact, backup and bundle verify: operations on files, no server needed. */
export function maintenanceCommands(): Command[] {
  const migrate = withDbOptions(new Command('migrate').description('create or upgrade the database schema')).action((f: DbFlags) =>
    withStore(f, ({ migration }) => printJson(migration)),
  );

  const db = new Command('db').description('database maintenance');
  db.addCommand(checksumCommand());
  withDbOptions(db.command('check').description('run SQLite integrity_check; exits 1 unless ok')).action((f: DbFlags) =>
    withStore(f, ({ store }) => {
      const rows = store.reader.pragma('integrity_check') as { integrity_check: string }[];
      const messages = rows.map((r) => r.integrity_check);
      const ok = messages.length === 1 && messages[0] === 'ok';
      printJson({ ok, messages });
      if (!ok) process.exitCode = 1;
    }),
  );
  withDbOptions(db.command('compact').description('checkpoint the WAL and VACUUM the database')).action((f: DbFlags) =>
    withStore(f, ({ store }, config) => {
      const before = statSync(config.dbPath).size;
      store.writer.db.exec('VACUUM');
      store.writer.db.pragma('wal_checkpoint(TRUNCATE)');
      printJson({ before_bytes: before, after_bytes: statSync(config.dbPath).size });
    }),
  );

  const backup = withDbOptions(
    new Command('backup').description('write a consistent copy of the live database').requiredOption('--out <file>', 'destination file'),
  ).action(async (f: DbFlags & { out: string }) => {
    await withStore(f, async ({ store }) => {
      const started = Date.now();
      await store.reader.backup(f.out);
      printJson({ out: f.out, bytes: statSync(f.out).size, ms: Date.now() - started });
    });
  });

  const bundle = new Command('bundle').description('config bundles');
  bundle
    .command('verify')
    .description('check a bundle file with the same rules as the upload endpoint')
    .argument('<file>', 'a .tar.gz bundle')
    .option('--max-bytes <n>', 'size limit (env NEBULAGC_MAX_BUNDLE_BYTES)', intArg('--max-bytes'))
    .action(async (file: string, f: { maxBytes?: number }) => {
      const maxBytes = f.maxBytes ?? loadConfig(process.env).maxBundleBytes;
      const inspected = await inspectBundle(readFileSync(file), defaultBundleLimits(maxBytes));
      printJson({ ok: true, sha256: inspected.sha256, size_bytes: inspected.data.length, files: inspected.files });
    });

  return [migrate, db, backup, bundle];
}

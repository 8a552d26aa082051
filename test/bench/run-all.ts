import os from 'node:os';
import { runDaemonIdleBench } from './daemon-idle.js';
import { isEntryPoint } from './entry.js';
import { runPollBench } from './polls.js';
import { runReplicationBench } from './replication.js';
import { runWriteBench } from './writes.js';

if (isEntryPoint(import.meta.url)) {
  // The figures mean little without the machine they came from.
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`${os.availableParallelism()} cores (${cpu}), Node ${process.version}, ${os.platform()} ${os.release()}`);
  // In sequence, never together: each saturates the same cores.
  const pollsOk = await runPollBench();
  const writesOk = await runWriteBench();
  const replicationOk = await runReplicationBench();
  await runDaemonIdleBench();
  if (!pollsOk || !writesOk || !replicationOk) process.exitCode = 1;
}

import os from 'node:os';
import { runBlockingBench } from './blocking.js';
import { runDaemonIdleBench } from './daemon-idle.js';
import { runDrBench } from './dr.js';
import { runLitestreamWritesBench } from './litestream-writes.js';
import { isEntryPoint } from './entry.js';
import { runPollBench } from './polls.js';
import { runRenderBench } from './render.js';
import { runReplicationBench } from './replication.js';
import { runSwitchoverBench } from './switchover.js';
import { runSyncWriteBench } from './sync-writes.js';
import { runFailoverBench } from './failover.js';
import { runFrontingBench } from './fronting.js';
import { runWriteBench } from './writes.js';

if (isEntryPoint(import.meta.url)) {
  // The figures mean little without the machine they came from.
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`${os.availableParallelism()} cores (${cpu}), Node ${process.version}, ${os.platform()} ${os.release()}`);
  // In sequence, never together: each saturates the same cores.
  const pollsOk = await runPollBench();
  const writesOk = await runWriteBench();
  const replicationOk = await runReplicationBench();
  const switchoverOk = await runSwitchoverBench();
  const syncOk = await runSyncWriteBench();
  await runFailoverBench();
  await runFrontingBench();
  await runDrBench();
  await runLitestreamWritesBench();
  const renderOk = await runRenderBench();
  const blockingOk = await runBlockingBench();
  await runDaemonIdleBench();
  if (!pollsOk || !writesOk || !replicationOk || !switchoverOk || !syncOk || !renderOk || !blockingOk) process.exitCode = 1;
}

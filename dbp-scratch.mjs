import Database from 'better-sqlite3'; import fs from 'node:fs';
const q=(a,p)=>a.slice().sort((x,y)=>x-y)[Math.floor(a.length*p)].toFixed(3);
const f='/work/main/data-dbp-test.db'; for (const s of ['','-wal','-shm']) fs.rmSync(f+s,{force:true});
const src=new Database(f+'.src'); src.pragma('journal_mode=WAL'); src.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload BLOB)');
for (let i=0;i<2000;i++) src.prepare('INSERT INTO t (at,payload) VALUES (?,?)').run(i,Buffer.alloc(100,1));
src.pragma('wal_checkpoint(TRUNCATE)'); src.close(); fs.copyFileSync(f+'.src', f);
for (const sync of ['FULL','NORMAL','OFF']) {
const db=new Database(f); db.pragma('journal_mode=WAL'); db.pragma('synchronous='+sync); db.pragma('wal_autocheckpoint=1000'); db.unsafeMode(true);
const pages=db.prepare('SELECT pgno,data FROM sqlite_dbpage').all();
const st=db.prepare('INSERT INTO sqlite_dbpage(pgno,data) VALUES (?,?),(?,?)');
const t=[]; const N=3000;
for (let i=0;i<N;i++){ const a=pages[10+(i%20)], b=pages[30+(i%20)]; const s=performance.now(); st.run(a.pgno,a.data,b.pgno,b.data); t.push(performance.now()-s); }
console.log('dbpage 2 pages', sync.padEnd(7),'p50',q(t,.5),'p90',q(t,.9),'p99',q(t,.99));
db.close();
}
for (const s of ['','-wal','-shm','.src']) fs.rmSync(f+s,{force:true});

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Counter, Histogram, Registry } from 'prom-client';
import { DeferredCounter, DeferredHistogram } from '../../server/src/http/deferred-metrics.js';

/** The registry's text exposition, as a scrape sees it, as a map of series to value. */
async function scrape(registry: Registry): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await registry.metrics()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe('deferred metrics', () => {
  it('a counter reports exactly what its handles counted, once, at every scrape', async () => {
    const registry = new Registry();
    const counter = new Counter({ name: 'c_total', help: 'c', labelNames: ['op'], registers: [registry] });
    const deferred = new DeferredCounter(counter);
    const a = deferred.handle({ op: 'a' });
    const b = deferred.handle({ op: 'b' });
    for (let i = 0; i < 5; i++) a.inc();
    b.inc(40);
    let m = await scrape(registry);
    assert.equal(m.get('c_total{op="a"}'), 5);
    assert.equal(m.get('c_total{op="b"}'), 40);
    a.inc(2);
    m = await scrape(registry);
    assert.equal(m.get('c_total{op="a"}'), 7, 'added once, not again at the next scrape');
    assert.equal(m.get('c_total{op="b"}'), 40);
  });

  it('a histogram reports the same buckets, sum and count as observe() would, labelled or not', async () => {
    const values = [0.00005, 0.0003, 0.0003, 0.002, 0.2, 7];
    const buckets = [0.0001, 0.001, 0.01, 0.1, 1];
    const direct = new Registry();
    const viaHandles = new Registry();
    const make = (registry: Registry, name: string, labelNames: string[]): Histogram<string> =>
      new Histogram({ name, help: 'h', buckets, labelNames, registers: [registry] });
    const plainDirect = make(direct, 'h_plain', []);
    const labelledDirect = make(direct, 'h_labelled', ['route']);
    const plain = new DeferredHistogram(make(viaHandles, 'h_plain', [])).handle({});
    const labelled = new DeferredHistogram(make(viaHandles, 'h_labelled', ['route'])).handle({ route: '/x' });
    for (const v of values) {
      plainDirect.observe(v);
      labelledDirect.observe({ route: '/x' }, v);
      plain.observe(v);
      labelled.observe(v);
    }
    const want = await scrape(direct);
    const got = await scrape(viaHandles);
    assert.ok(want.size > 10);
    for (const [series, value] of want) assert.ok(Math.abs((got.get(series) ?? NaN) - value) < 1e-12, `${series}: ${got.get(series)} against ${value}`);
    plain.observe(0.5);
    assert.equal((await scrape(viaHandles)).get('h_plain_count'), values.length + 1);
  });
});

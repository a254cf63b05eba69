// Browser test of resuming: a real 2-node local cluster (`roomshard-operator local`, real
// roomshard-node processes), the chat page reached through a small TCP proxy that plays the
// Kubernetes Service (it sends each connection to the first node that accepts it, node-1
// first). The page's node is stopped by scaling the cluster to 1 while another user keeps
// sending; the page must come back on node-0 and show every message exactly once, in order.
//
//   ROOMSHARD_OPERATOR_BIN  operator binary (default ../../target/debug/roomshard-operator)
//   ROOMSHARD_NODE_BIN      node binary (default ../../target/debug/roomshard-node)
//   CHROMIUM                browser executable (default /usr/bin/chromium)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { LocalCluster, launchChromium } from './support.mjs';

const START_TIMEOUT_MS = 40_000; // the cluster settling and printing its banner
const STEP_TIMEOUT_MS = 15_000;  // any single wait in the browser
const MESSAGES = 40;             // sent by bob while alice's node goes away
const SEND_EVERY_MS = 75;

let cluster;          // the local cluster (see support.mjs)
let proxy;            // the stand-in Service
let browser;

/**
 * A TCP proxy on 127.0.0.1:0 that connects each client to the first backend that accepts,
 * like a Service whose endpoints are `backends` in order. Records where each connection went.
 */
function startProxy(backends) {
  const routed = [];
  const server = net.createServer((client) => {
    client.pause();
    const tryBackend = (i) => {
      if (i >= backends.length) { client.destroy(); return; }
      const [host, port] = backends[i].split(':');
      const upstream = net.connect(Number(port), host);
      upstream.once('error', () => tryBackend(i + 1));
      upstream.once('connect', () => {
        upstream.removeAllListeners('error');
        routed.push(backends[i]);
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        client.pipe(upstream).pipe(client);
        client.resume();
      });
    };
    tryBackend(0);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, routed, port: server.address().port })));
}

before(async () => {
  cluster = new LocalCluster(['--nodes', '2', '--shards', '16', '--shutdown-grace', '3s', '--',
    '--worker-threads', '1'], START_TIMEOUT_MS);
  const { nodes, admin } = await cluster.started;
  assert.ok(nodes['node-0'] && nodes['node-1'], `both nodes listed in the banner:\n${cluster.log}`);
  cluster.info = { nodes, admin };
  proxy = await startProxy([nodes['node-1'], nodes['node-0']]);
  browser = await launchChromium(STEP_TIMEOUT_MS);
});

after(async () => {
  await browser?.close().catch(() => {});
  proxy?.server.close();
  await cluster?.stop();
});

test('when the page\'s node is stopped the page resumes on another node without missing a message', { timeout: 120_000 }, async (t) => {
  t.after(() => { if (t.passed === false) console.error(cluster.log); });
  const context = await browser.newContext({ viewport: { width: 1000, height: 600 } });
  try {
    // alice: the chat page, through the proxy, so it lands on node-1
    const alice = await context.newPage();
    alice.setDefaultTimeout(STEP_TIMEOUT_MS);
    const pageErrors = [];
    alice.on('pageerror', (err) => pageErrors.push(err));
    await alice.goto(`http://127.0.0.1:${proxy.port}/`);
    await alice.fill('#user', 'alice');
    await alice.click('#connect');
    await alice.locator('#status', { hasText: /^connected$/ }).waitFor();
    await alice.fill('#room-input', 'lobby');
    await alice.click('#join');
    await alice.locator('#rooms [data-room="lobby"][data-state="joined"]').waitFor();
    assert.ok(proxy.routed.length > 0 && proxy.routed.every((b) => b === cluster.info.nodes['node-1']),
      `alice's connections all went to node-1: ${proxy.routed}`);

    // bob: the client library in a tab straight on node-0, which stays up
    const bob = await context.newPage();
    bob.setDefaultTimeout(STEP_TIMEOUT_MS);
    bob.on('pageerror', (err) => pageErrors.push(err));
    await bob.goto(`http://${cluster.info.nodes['node-0']}/`);
    const sending = bob.evaluate(async ({ count, every }) => {
      const { RoomshardClient } = await import('/roomshard.js');
      const client = new RoomshardClient({ url: `ws://${location.host}/ws`, user: 'bob' });
      client.connect();
      await client.join('lobby');
      const sends = [];
      for (let i = 1; i <= count; i += 1) {
        sends.push(client.send('lobby', `bob ${i}`).then((m) => ({ text: `bob ${i}`, seq: m.seq }), (e) => ({ text: `bob ${i}`, error: e.code })));
        await new Promise((resolve) => setTimeout(resolve, every));
      }
      const results = await Promise.all(sends);
      client.close();
      return results;
    }, { count: MESSAGES, every: SEND_EVERY_MS });

    // a few messages in, stop alice's node: scale 2 -> 1 drains node-1, which then exits
    await alice.locator('#messages .msg', { hasText: /^.*bob 5$/ }).waitFor();
    const scaled = await fetch(`${cluster.info.admin}/scale`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ replicas: 1 }),
    });
    assert.equal(scaled.status, 202, await scaled.text());

    const results = await sending;
    const delivered = results.filter((r) => r.seq !== undefined);
    assert.deepEqual(results.filter((r) => r.error), [], 'every send of bob was delivered');

    await alice.locator('#messages .msg', { hasText: `bob ${MESSAGES}` }).waitFor();
    await alice.locator('#status', { hasText: /^connected$/ }).waitFor();
    const shown = await alice.locator('#messages .msg').evaluateAll((els) =>
      els.map((e) => ({ seq: Number(e.dataset.seq), text: e.querySelector('.text').textContent })));
    // every message bob got an acknowledgement for, each once, in seq order, no gap
    assert.deepEqual(shown, delivered.map(({ text, seq }) => ({ seq, text })));
    const seqs = shown.map((m) => m.seq);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => seqs[0] + i));
    // and alice really moved: a later connection of hers went to node-0
    assert.ok(proxy.routed.includes(cluster.info.nodes['node-0']), `alice reconnected to node-0: ${proxy.routed}`);
    assert.equal(await alice.locator('#messages .note').count(), 0, 'no gap was reported');
    assert.deepEqual(pageErrors, []);
  } finally {
    await context.close().catch(() => {});
  }
});

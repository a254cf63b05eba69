// Browser test of the live shard map (`GET /map` on the local driver's admin port): a real
// 3-node local cluster (`roomshard-operator local`, real roomshard-node processes), the map open
// in headless Chromium while the cluster is scaled down to 2 through the admin port. The map must
// show every pod and every shard owned, a client's connection as load, then the draining pod with
// its moves and the shards it has left, then the final state with 2 pods owning every shard.
//
// `--max-moves-per-node 1` makes the drain hand node-2's shards off one table at a time (about
// 20 rounds of a few hundred milliseconds), so it lasts several of the page's 1 s polls.
//
//   ROOMSHARD_OPERATOR_BIN  operator binary (default ../../target/debug/roomshard-operator)
//   ROOMSHARD_NODE_BIN      node binary (default ../../target/debug/roomshard-node)
//   CHROMIUM                browser executable (default /usr/bin/chromium)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { LocalCluster, launchChromium } from './support.mjs';

const START_TIMEOUT_MS = 40_000; // the cluster settling and printing its banner
const STEP_TIMEOUT_MS = 20_000;  // any single wait in the browser
const SHARDS = 64;

let cluster;          // the local cluster (see support.mjs)
let browser;

before(async () => {
  cluster = new LocalCluster(['--nodes', '3', '--shards', String(SHARDS), '--max-moves-per-node', '1',
    '--shutdown-grace', '3s', '--', '--worker-threads', '1'], START_TIMEOUT_MS);
  const info = await cluster.started;
  assert.ok(info.nodes['node-0'] && info.nodes['node-2'], `the nodes are listed in the banner:\n${cluster.log}`);
  cluster.info = info;
  browser = await launchChromium(STEP_TIMEOUT_MS);
});

after(async () => {
  await browser?.close().catch(() => {});
  await cluster?.stop();
});

/** The shard counts the map shows, by pod. */
async function shardsByPod(page) {
  return page.locator('section[data-cluster="local"] .pod').evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.pod, Number(e.dataset.shards)])));
}

/** The owner of every cell of the grid, by shard. */
async function cellOwners(page) {
  return page.locator('section[data-cluster="local"] rect.cell').evaluateAll((els) =>
    els.map((e) => [Number(e.dataset.shard), e.dataset.owner]));
}

test('the shard map shows every pod and shard, then a scale-down draining a pod, then the smaller cluster', { timeout: 120_000 }, async (t) => {
  t.after(() => { if (t.passed === false) console.error(cluster.log); });
  const { admin, nodes } = cluster.info;
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  try {
    const map = await context.newPage();
    map.setDefaultTimeout(STEP_TIMEOUT_MS);
    const problems = [];
    map.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    map.on('console', (msg) => { if (msg.type() === 'error') problems.push(`console: ${msg.text()}`); });
    const requested = [];
    map.on('request', (req) => requested.push(req.url()));

    // 1. The settled cluster: three ready pods, every shard owned, nothing moving.
    await map.goto(`${admin}/map`);
    await map.locator('#status[data-state="live"]').waitFor();
    const section = map.locator(`section[data-cluster="local"][data-pods="3"][data-owned="${SHARDS}"][data-moves="0"]`);
    await section.waitFor();
    for (const name of ['node-0', 'node-1', 'node-2']) {
      await map.locator(`section[data-cluster="local"] .pod[data-pod="${name}"][data-state="ready"]`).waitFor();
    }
    const before = await shardsByPod(map);
    assert.deepEqual(Object.keys(before).sort(), ['node-0', 'node-1', 'node-2']);
    assert.equal(Object.values(before).reduce((a, b) => a + b, 0), SHARDS);
    assert.ok(Object.values(before).every((n) => n > 0), `every pod owns shards: ${JSON.stringify(before)}`);
    const cells = await cellOwners(map);
    assert.equal(cells.length, SHARDS, 'one cell per shard');
    assert.ok(cells.every(([, owner]) => ['node-0', 'node-1', 'node-2'].includes(owner)), 'every cell has a live owner');
    assert.equal(await map.locator('section[data-cluster="local"] .drain').getAttribute('data-phase'), 'Steady');

    // 2. Load: a chat client on node-0 shows as one connection there.
    const chat = await context.newPage();
    chat.setDefaultTimeout(STEP_TIMEOUT_MS);
    await chat.goto(`http://${nodes['node-0']}/`);
    await chat.fill('#user', 'alice');
    await chat.click('#connect');
    await chat.locator('#status', { hasText: /^connected$/ }).waitFor();
    await map.locator('section[data-cluster="local"] .pod[data-pod="node-0"][data-connections="1"]').waitFor();

    // 3. Scale down to 2 through the admin port: node-2 drains, shard by shard.
    const scaled = await fetch(`${admin}/scale`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ replicas: 2 }),
    });
    assert.equal(scaled.status, 202, await scaled.text());
    await map.locator('section[data-cluster="local"] .pod[data-pod="node-2"][data-state="draining"]').waitFor();
    const drain = map.locator('section[data-cluster="local"] .drain[data-active="true"][data-draining="node-2"]');
    await drain.waitFor();
    const left = Number(await drain.getAttribute('data-shards-left'));
    assert.ok(left > 0 && left <= before['node-2'], `node-2 has shards left to hand off: ${left}`);
    assert.match(await drain.textContent(), /Draining node-2: \d+ shards? left to hand off/);
    const move = map.locator('section[data-cluster="local"] li.move[data-from="node-2"]').first();
    await move.waitFor();
    const target = await move.getAttribute('data-to');
    assert.ok(['node-0', 'node-1'].includes(target), `a move goes from node-2 to a staying pod: ${target}`);
    assert.match(await move.textContent(), /^shard \d+: node-2 \u2192 node-[01]$/);
    await map.locator('section[data-cluster="local"] rect.cell.moving[data-from="node-2"]').first().waitFor();

    // 4. The smaller cluster: two pods own every shard, nothing drains or moves.
    await map.locator(`section[data-cluster="local"][data-pods="2"][data-owned="${SHARDS}"][data-moves="0"]`)
      .waitFor({ timeout: 60_000 });
    await map.locator('section[data-cluster="local"] .drain[data-phase="Steady"][data-active="false"]').waitFor();
    const afterScale = await shardsByPod(map);
    assert.deepEqual(Object.keys(afterScale).sort(), ['node-0', 'node-1']);
    assert.equal(afterScale['node-0'] + afterScale['node-1'], SHARDS);
    const cellsAfter = await cellOwners(map);
    assert.ok(cellsAfter.every(([, owner]) => owner === 'node-0' || owner === 'node-1'), 'every cell is owned by node-0 or node-1');
    for (const name of ['node-0', 'node-1']) {
      assert.equal(await map.locator(`.pod[data-pod="${name}"]`).getAttribute('data-state'), 'ready');
    }
    // The page's change log kept the drain.
    assert.ok(await map.locator('#events li[data-draining="node-2"]').count() > 0, 'the drain is in the change log');

    assert.deepEqual(problems, []);
    const origin = new URL(admin).origin;
    assert.ok(requested.every((u) => u.startsWith(origin)), `the page fetched nothing from elsewhere: ${requested.filter((u) => !u.startsWith(origin))}`);
  } finally {
    await context.close().catch(() => {});
  }
});

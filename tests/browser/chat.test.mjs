// Browser test of the chat page: a real roomshard-node on 127.0.0.1:0, two tabs in headless
// Chromium (Debian's, driven by playwright-core), alice and bob chatting in one room.
//
//   ROOMSHARD_NODE_BIN  node binary (default ../../target/debug/roomshard-node from this file)
//   CHROMIUM            browser executable (default /usr/bin/chromium)
//
// A screenshot of bob's tab is written to artifacts/chat.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchChromium, nodeBin } from './support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');

const START_TIMEOUT_MS = 20_000; // node binary printing its listening line
const STEP_TIMEOUT_MS = 10_000;  // any single wait in the browser

let node;          // the roomshard-node child process
let nodeLog = '';  // its stdout and stderr, shown when something fails
let browser;
let baseUrl;

/** Starts the node binary and resolves with its port, parsed from `listening on http://127.0.0.1:PORT`. */
function startNode() {
  if (!fs.existsSync(nodeBin)) {
    throw new Error(`node binary not found at ${nodeBin}; run \`cargo build --workspace --bins\` or set ROOMSHARD_NODE_BIN`);
  }
  // own process group, so a wrapper script and everything it started can be stopped together
  node = spawn(nodeBin, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no "listening on" line from the node within ${START_TIMEOUT_MS} ms; output:\n${nodeLog}`)),
      START_TIMEOUT_MS,
    );
    let pending = '';
    node.stdout.setEncoding('utf8');
    node.stderr.setEncoding('utf8');
    node.stderr.on('data', (chunk) => { nodeLog += chunk; });
    node.stdout.on('data', (chunk) => {
      nodeLog += chunk;
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        const plain = line.replace(/\x1b\[[0-9;]*m/g, ''); // tolerate coloured log output
        const found = plain.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (found) { clearTimeout(timer); resolve(Number(found[1])); return; }
      }
    });
    node.on('error', (err) => { clearTimeout(timer); reject(err); });
    node.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`node exited early (code ${code}, signal ${signal}); output:\n${nodeLog}`));
    });
  });
}

/** Kills the node's whole process group at once; safe to call when it is already gone. */
function killNodeGroup(signal) {
  if (!node) return;
  try { process.kill(-node.pid, signal); } catch { /* already gone */ }
}

// The node is in its own process group, so Ctrl-C does not reach it: take it down with us.
process.once('exit', () => killNodeGroup('SIGKILL'));
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => { killNodeGroup('SIGKILL'); process.exit(130); });
}

/** Stops the node's process group: SIGTERM, then SIGKILL if the node has not exited within 5 s. */
async function stopNode() {
  if (!node) return;
  if (node.exitCode === null && node.signalCode === null) {
    const exited = new Promise((resolve) => node.once('exit', resolve));
    killNodeGroup('SIGTERM');
    const timer = setTimeout(() => killNodeGroup('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
  killNodeGroup('SIGKILL'); // anything the node left behind in its group
  node.stdout.destroy();
  node.stderr.destroy();
}

/** Opens the page in a new tab, connects as `user` and joins `room`. */
async function openAs(context, user, room) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.pageErrors = [];
  page.on('pageerror', (err) => page.pageErrors.push(err));
  await page.goto(baseUrl);
  await page.fill('#user', user);
  await page.click('#connect');
  await page.locator('#status', { hasText: /^connected$/ }).waitFor();
  await page.fill('#room-input', room);
  await page.click('#join');
  await page.locator(`#rooms [data-room="${room}"][data-state="joined"]`).waitFor();
  return page;
}

before(async () => {
  const port = await startNode();
  baseUrl = `http://127.0.0.1:${port}/`;
  browser = await launchChromium(STEP_TIMEOUT_MS);
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopNode();
});

test('two people in one room see each other and each other\'s messages', { timeout: 60_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 600 } });
  let bob;
  try {
    const alice = await openAs(context, 'alice', 'lobby');
    bob = await openAs(context, 'bob', 'lobby');

    // bob learns of alice from `joined.members`, alice of bob from a `presence` event
    await bob.locator('#members li', { hasText: /^alice$/ }).waitFor();
    await alice.locator('#members li', { hasText: /^bob$/ }).waitFor();

    await alice.fill('#text', 'hello from alice');
    await alice.click('#send');
    const atBob = bob.locator('#messages .msg', { hasText: 'hello from alice' });
    await atBob.waitFor();
    assert.match(await atBob.getAttribute('data-seq'), /^[1-9][0-9]*$/);
    assert.match(await atBob.textContent(), /alice/);

    await bob.fill('#text', 'hi alice, bob here');
    await bob.press('#text', 'Enter');
    await alice.locator('#messages .msg', { hasText: 'hi alice, bob here' }).waitFor();

    // the sender gets its own message back exactly once, and seqs grow in order
    assert.equal(await alice.locator('#messages .msg', { hasText: 'hello from alice' }).count(), 1);
    const seqs = (await alice.locator('#messages .msg').evaluateAll((els) => els.map((e) => Number(e.dataset.seq))));
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.equal(await bob.locator('#errors li').count(), 0);
    assert.deepEqual(alice.pageErrors, []);
    assert.deepEqual(bob.pageErrors, []);
  } finally {
    // taken on failure too: it shows what bob's tab looked like when the test stopped
    if (bob) {
      fs.mkdirSync(artifacts, { recursive: true });
      await bob.screenshot({ path: path.join(artifacts, 'chat.png'), timeout: STEP_TIMEOUT_MS }).catch(() => {});
    }
    await context.close().catch(() => {});
  }
});

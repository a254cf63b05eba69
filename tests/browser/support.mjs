// What the browser tests share: the binaries and browser they run (from the environment), a
// `roomshard-operator local` cluster as a child process, and headless Chromium.
//
//   ROOMSHARD_OPERATOR_BIN  operator binary (default ../../target/debug/roomshard-operator)
//   ROOMSHARD_NODE_BIN      node binary (default ../../target/debug/roomshard-node)
//   CHROMIUM                browser executable (default /usr/bin/chromium)

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const operatorBin = path.resolve(here, process.env.ROOMSHARD_OPERATOR_BIN || '../../target/debug/roomshard-operator');
export const nodeBin = path.resolve(here, process.env.ROOMSHARD_NODE_BIN || '../../target/debug/roomshard-node');
export const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';

/** Headless Chromium without sandbox, GPU or background traffic; `timeout` bounds the launch. */
export function launchChromium(timeout) {
  return chromium.launch({
    executablePath: chromiumBin,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout,
  });
}

/**
 * `roomshard-operator local ARGS --port 0 --node-bin NODE`, in its own process group (killed
 * with this process at the latest). `started` resolves with `{ nodes, admin }` parsed from its
 * banner (node name -> `127.0.0.1:PORT` of its WebSocket, the admin URL); `log` is everything it
 * printed, shown when something fails.
 */
export class LocalCluster {
  constructor(args, startTimeoutMs) {
    for (const bin of [operatorBin, nodeBin]) {
      if (!fs.existsSync(bin)) throw new Error(`${bin} not found; run \`cargo build --workspace --bins\``);
    }
    this.log = '';
    this.child = spawn(operatorBin, ['local', '--port', '0', '--node-bin', nodeBin, ...args],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    process.once('exit', () => this.kill('SIGKILL'));
    this.started = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no banner from the local cluster within ${startTimeoutMs} ms:\n${this.log}`)), startTimeoutMs);
      const nodes = {};
      this.child.stdout.setEncoding('utf8');
      this.child.stderr.setEncoding('utf8');
      this.child.stderr.on('data', (chunk) => { this.log += chunk; });
      this.child.stdout.on('data', (chunk) => {
        this.log += chunk;
        for (const line of chunk.split('\n')) {
          const node = line.match(/^\s+(node-\d+)\s+ws:\/\/(127\.0\.0\.1:\d+)\/ws/);
          if (node) nodes[node[1]] = node[2];
          const admin = line.match(/^admin:\s+(http:\/\/127\.0\.0\.1:\d+)/);
          if (admin) { clearTimeout(timer); resolve({ nodes, admin: admin[1] }); }
        }
      });
      this.child.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`the local cluster exited early (code ${code}, signal ${signal}):\n${this.log}`));
      });
    });
  }

  /** Signals the cluster's whole process group; safe once it is gone. */
  kill(signal) {
    try { process.kill(-this.child.pid, signal); } catch { /* already gone */ }
  }

  /** Ctrl-C (the driver stops every node), SIGKILL after 10 s, then SIGKILL to anything left. */
  async stop() {
    const child = this.child;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      this.kill('SIGINT');
      const timer = setTimeout(() => this.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    this.kill('SIGKILL');
  }
}

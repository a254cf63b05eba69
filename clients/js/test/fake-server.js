// A scripted stand-in for a roomshard node: a real WebSocket server on 127.0.0.1:0 (the `ws`
// package) whose answers the test writes frame by frame, so every reconnect, replay, duplicate
// and refusal happens exactly when the test says.

import { WebSocketServer } from 'ws';

const WAIT_MS = 5_000;

/** Resolves when `take()` finds something in `queue`, or as soon as something is pushed. */
class Inbox {
  constructor() { this.items = []; this.waiters = []; }
  push(item) {
    this.items.push(item);
    for (const w of this.waiters.splice(0)) w();
  }
  /** Removes and returns the first item matching `pred`, waiting up to WAIT_MS for one. */
  async take(pred, what) {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const at = this.items.findIndex(pred);
      if (at >= 0) return this.items.splice(at, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`fake server: no ${what} within ${WAIT_MS} ms; have ${JSON.stringify(this.items)}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }
}

/** One client connection as the server sees it. */
export class FakeConnection {
  constructor(socket, url) {
    this.socket = socket;
    this.query = new URL(url, 'http://localhost').searchParams;
    this.frames = new Inbox();
    this.closed = new Promise((resolve) => socket.on('close', (code) => resolve(code)));
    socket.on('message', (data) => this.frames.push(JSON.parse(String(data))));
  }

  /** The next frame from the client with this `op`. */
  next(op) { return this.frames.take((f) => f.op === op, `"${op}" frame`); }

  /** Sends one server frame. */
  send(frame) { this.socket.send(JSON.stringify(frame)); }

  /** Closes the connection with a WebSocket close code. */
  close(code = 1001, reason = '') { this.socket.close(code, reason); }

  /** Drops the TCP connection without a close frame, as a killed node would. */
  kill() { this.socket.terminate(); }
}

export class FakeServer {
  /** Listens on `port` (0: any free one). */
  static async start(port = 0) {
    const server = new FakeServer();
    server.wss = new WebSocketServer({ host: '127.0.0.1', port });
    server.connections = new Inbox();
    server.wss.on('connection', (socket, req) => server.connections.push(new FakeConnection(socket, req.url)));
    await new Promise((resolve) => server.wss.once('listening', resolve));
    server.url = `ws://127.0.0.1:${server.wss.address().port}/ws`;
    return server;
  }

  /** The next client connection (in order of arrival). */
  accept() { return this.connections.take(() => true, 'connection'); }

  async stop() {
    for (const client of this.wss.clients) client.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

/** A `msg` frame as the node sends it. */
export function msg(room, seq, extra = {}) {
  return { op: 'msg', room, seq, id: String(1000 + seq), user: 'bob', text: `m${seq}`, ts: 1_700_000_000_000 + seq, ...extra };
}

/** A `joined` frame with `history` built from seqs. */
export function joined(room, seq, historySeqs = [], members = ['alice']) {
  const history = historySeqs.map((s) => msg(room, s));
  return { op: 'joined', room, seq, members, history };
}

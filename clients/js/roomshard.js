// roomshard client for wire protocol v1 (docs/protocol.md): one ES module, no dependencies
// beyond a WebSocket implementation (the platform's in browsers; pass one in on Node.js 20).
//
// What it does for the application: keeps one connection to the cluster, reconnects on close
// with exponential backoff and jitter, moves to another node without leaving its rooms when
// one says `reconnect` (the new connection joins before the old one closes), re-joins every room with
// `since` = the last seq it saw, drops a message delivered twice (by `id`), reports a gap when
// the room's history no longer reaches back, and turns each `send` into a promise that
// resolves with the message's `seq` and `id` (from the sender's own echo) or rejects with the
// server's error.

/** Close codes the node uses (docs/protocol.md, "Close codes"). */
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_BIG = 1009;
export const CLOSE_SLOW_CONSUMER = 1013;

const OPEN = 1; // WebSocket.OPEN, the same in every implementation

/** Error codes that mean "try again", not "no". */
const TRANSIENT = new Set(['room_unavailable', 'overloaded', 'rate_limited']);

/** Defaults, in milliseconds unless named otherwise. */
const DEFAULTS = {
  backoffInitialMs: 500,
  backoffMaxMs: 15_000,
  pingIntervalMs: 25_000,
  sendTimeoutMs: 10_000,
  // Enough to recognise a replayed message: the node keeps 100 messages per room by default.
  dedupeWindow: 2048,
  // How long a connection the node asked us to leave is kept while the next one joins (the
  // node serves it for at least a second after asking).
  retireMs: 5_000,
};

/** A server frame parsed, or null when it is not JSON. */
function parseFrame(data) {
  try { return JSON.parse(typeof data === 'string' ? data : String(data)); } catch { return null; }
}

/** An error the server answered with (an `error` frame), or one the client raised itself. */
export class RoomshardError extends Error {
  /**
   * @param {string} code protocol error code, or a client code (`timeout`, `closed`, `not_connected`)
   * @param {string} message
   * @param {string} [room]
   */
  constructor(code, message, room) {
    super(`${code}: ${message}`);
    this.name = 'RoomshardError';
    this.code = code;
    this.room = room;
  }
}

/** Per-room state that survives reconnects. */
class RoomState {
  constructor(name) {
    this.name = name;
    /** Last seq seen; sent as `since` on re-join. 0 before the first `joined`. */
    this.seq = 0;
    /** Whether a `joined` was ever received, so a re-join knows to ask for `since`. */
    this.synced = false;
    /** 'joining' | 'joined' | 'leaving' */
    this.state = 'joining';
    this.members = new Set();
    /** Recent message ids in arrival order, to drop a duplicate delivery (replay + live). */
    this.ids = new Set();
    /** Waiters of `join()` for the current attempt. */
    this.joinWaiters = [];
    /** The `since` the outstanding join asked for, to tell a gap from a first join. */
    this.askedSince = null;
  }
}

/**
 * A connection to a roomshard cluster that survives node restarts, drains and moves.
 *
 * Events (subscribe with `on`): `state`, `joined`, `message`, `presence`, `gap`, `error`,
 * `reconnecting`, `closed`. See roomshard.d.ts for their payloads.
 */
export class RoomshardClient {
  /** @param {import('./roomshard').ClientOptions} options */
  constructor(options) {
    if (!options || !options.url) throw new TypeError('roomshard: `url` is required');
    if (!options.user && !options.token) throw new TypeError('roomshard: `user` or `token` is required');
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('roomshard: no global WebSocket here (Node.js 20); pass one as the `WebSocket` option, e.g. from the `ws` package');
    }
    this.random = options.random ?? Math.random;
    /** @type {Map<string, RoomState>} */
    this.rooms = new Map();
    /** Sends waiting for their echo, by cid. */
    this.pending = new Map();
    /** Pings waiting for their pong, by cid. */
    this.pings = new Map();
    this.listeners = new Map();
    this.socket = null;
    this.state = 'idle';
    this.wanted = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.cidCounter = 0;
    this.urlIndex = 0;
    // Distinguishes this client's cids from another tab's in logs; not a secret.
    this.cidPrefix = Math.floor(this.random() * 36 ** 4).toString(36);
  }

  /**
   * Subscribe to an event. Returns a function that unsubscribes.
   * @param {string} type
   * @param {(payload: any) => void} listener
   */
  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    return () => this.listeners.get(type)?.delete(listener);
  }

  emit(type, payload) {
    for (const listener of this.listeners.get(type) ?? []) {
      // A throwing listener must not break the protocol state machine.
      try { listener(payload); } catch (err) { queueMicrotask(() => { throw err; }); }
    }
  }

  /** Start connecting (and keep reconnecting until `close()`). */
  connect() {
    this.wanted = true;
    if (!this.socket && !this.retryTimer) void this.open();
  }

  /** Close the connection for good; pending sends and joins are rejected with `closed`. */
  close() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.closeRetiring();
    this.retryTimer = null;
    const socket = this.socket;
    this.detach();
    if (socket) socket.close(1000, 'bye');
    this.failAll(new RoomshardError('closed', 'the client was closed'));
    this.setState('closed');
  }

  /** Whether the socket is open. */
  get connected() {
    return this.socket !== null && this.socket.readyState === OPEN && this.state === 'open';
  }

  /**
   * Join a room (or re-sync one already joined). Resolves with the `joined` event payload; the
   * room is re-joined automatically after every reconnect until `leave`. `since` resumes from a
   * seq the application kept itself (say, from an earlier client): only later messages come.
   * @param {string} room
   * @param {{ since?: number }} [options]
   */
  join(room, options = {}) {
    let r = this.rooms.get(room);
    if (!r) { r = new RoomState(room); this.rooms.set(room, r); }
    if (Number.isInteger(options.since) && options.since >= 0 && !r.synced) {
      r.seq = options.since;
      r.synced = true;
    }
    r.state = 'joining';
    const done = new Promise((resolve, reject) => r.joinWaiters.push({ resolve, reject }));
    if (this.connected) this.sendJoin(r);
    return done;
  }

  /** Leave a room; it is no longer re-joined. */
  leave(room) {
    const r = this.rooms.get(room);
    if (!r) return;
    this.rooms.delete(room);
    for (const w of r.joinWaiters) w.reject(new RoomshardError('closed', 'left the room', room));
    r.joinWaiters = [];
    if (this.connected) this.write({ op: 'leave', room });
  }

  /** The last seq seen in a room (0 when none). */
  lastSeq(room) { return this.rooms.get(room)?.seq ?? 0; }

  /** The members of a room as last known. */
  members(room) { return [...(this.rooms.get(room)?.members ?? [])].sort(); }

  /**
   * Post a message. Resolves with `{ seq, id, ts, user }` once the sender's echo arrives; rejects
   * with the server's error, or with `timeout` when no answer came within `sendTimeoutMs`
   * (the message may still have been delivered: a later `message` event would show it).
   * Sends made while reconnecting go out once the room is joined again.
   * @param {string} room
   * @param {string} text
   */
  send(room, text) {
    const r = this.rooms.get(room);
    if (!r) return Promise.reject(new RoomshardError('not_joined', 'join the room before sending', room));
    const cid = `${this.cidPrefix}-${++this.cidCounter}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(cid);
        reject(new RoomshardError('timeout', `no answer within ${this.options.sendTimeoutMs} ms; it may still be delivered`, room));
        this.settleMove();
      }, this.options.sendTimeoutMs);
      const entry = { room, text, cid, resolve, reject, timer, written: false, socket: null };
      this.pending.set(cid, entry);
      // While moving, a send waits: the ones written on the old connection go first.
      if (this.connected && r.state === 'joined' && !this.retiring) this.writeSend(entry);
    });
  }

  /** Round trip to the node; resolves with the time it took in milliseconds. */
  ping() {
    if (!this.connected) return Promise.reject(new RoomshardError('not_connected', 'not connected'));
    const cid = `${this.cidPrefix}-p${++this.cidCounter}`;
    const started = Date.now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(cid);
        reject(new RoomshardError('timeout', 'no pong'));
      }, this.options.sendTimeoutMs);
      this.pings.set(cid, { resolve: () => resolve(Date.now() - started), reject, timer });
      this.write({ op: 'ping', cid });
    });
  }

  // ---- connection lifecycle ----

  async url() {
    const { url } = this.options;
    let base = typeof url === 'function' ? await url() : url;
    if (Array.isArray(base)) {
      // Several entry points: try them in turn, so one stopped node is skipped.
      base = base[this.urlIndex++ % base.length];
    }
    let token = this.options.token;
    if (typeof token === 'function') token = await token();
    const sep = base.includes('?') ? '&' : '?';
    return token
      ? `${base}${sep}token=${encodeURIComponent(token)}`
      : `${base}${sep}user=${encodeURIComponent(this.options.user)}`;
  }

  async open() {
    this.setState('connecting');
    let target;
    try {
      target = await this.url();
    } catch (err) {
      this.scheduleReconnect(`no url or token: ${err?.message ?? err}`);
      return;
    }
    if (!this.wanted) return;
    let socket;
    try {
      socket = new this.WebSocket(target);
    } catch (err) {
      this.scheduleReconnect(`cannot connect: ${err?.message ?? err}`);
      return;
    }
    this.socket = socket;
    socket.onopen = () => { if (socket === this.socket) this.onOpen(); };
    socket.onmessage = (ev) => { if (socket === this.socket) this.onFrame(ev.data); };
    socket.onclose = (ev) => { if (socket === this.socket) this.onClose(ev.code, ev.reason); };
    // Errors are followed by a close event, which does the work.
    socket.onerror = () => {};
  }

  onOpen() {
    this.attempt = 0;
    this.setState('open');
    for (const r of this.rooms.values()) this.sendJoin(r);
    if (this.rooms.size === 0) this.settleMove();
    clearInterval(this.pingTimer);
    if (this.options.pingIntervalMs > 0) {
      let awaiting = false;
      // Keeps idle proxies from closing the socket, and notices a link that died silently.
      this.pingTimer = setInterval(() => {
        if (awaiting) { this.socket?.close(4000, 'no pong'); return; }
        awaiting = true;
        this.ping().then(() => { awaiting = false; }, () => {});
      }, this.options.pingIntervalMs);
    }
  }

  onClose(code, reason) {
    this.detach();
    for (const r of this.rooms.values()) if (r.state === 'joined') r.state = 'joining';
    // A sent message stays pending: its echo may come in the replay after the re-join.
    for (const p of this.pending.values()) p.written = false;
    for (const p of this.pings.values()) { clearTimeout(p.timer); p.reject(new RoomshardError('closed', 'connection closed')); }
    this.pings.clear();
    if (!this.wanted) return;
    if (code === CLOSE_POLICY && typeof this.options.token !== 'function') {
      // The identity was refused (bad or expired token): retrying the same one cannot help.
      this.wanted = false;
      const err = new RoomshardError('unauthorized', reason || 'identity refused');
      this.failAll(err);
      this.setState('closed');
      this.emit('closed', { code, reason, error: err });
      return;
    }
    if (code === CLOSE_POLICY) {
      // With a token function a fresh token is fetched for the next attempt.
      this.emit('error', new RoomshardError('unauthorized', reason || 'identity refused'));
    }
    this.scheduleReconnect(`closed (${code}${reason ? ` ${reason}` : ''})`, code);
  }

  scheduleReconnect(reason, code, afterMs) {
    clearTimeout(this.retryTimer);
    this.setState('reconnecting');
    // Full jitter over an exponential ceiling, so clients of a drained node spread out.
    const ceiling = Math.min(this.options.backoffMaxMs, this.options.backoffInitialMs * 2 ** this.attempt);
    const delayMs = Math.max(afterMs ?? 0, Math.round(ceiling / 2 + this.random() * ceiling / 2));
    this.attempt += 1;
    this.emit('reconnecting', { delayMs, reason, code, attempt: this.attempt });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.wanted) void this.open();
    }, delayMs);
  }

  /**
   * Keep `socket`, which the node asked us to leave, delivering messages (and answers to sends
   * made on it) until the new connection has joined every room, or at most `retireMs`.
   */
  retire(socket) {
    this.closeRetiring();
    this.retiring = socket;
    socket.onmessage = (ev) => {
      const f = parseFrame(ev.data);
      // Its messages are dropped by id when the new connection brings them too; answers to
      // what was sent on it (refusals, pongs) are still answers. Its other frames (a `joined`,
      // another `reconnect`) are the new connection's business now.
      if (f && (f.op === 'msg' || f.op === 'pong' || (f.op === 'error' && f.cid != null))) this.handle(f);
    };
    socket.onclose = () => {
      if (this.retiring !== socket) return;
      this.retiring = null;
      this.settleMove();
    };
    this.retireTimer = setTimeout(() => { this.closeRetiring(); this.settleMove(); }, this.options.retireMs);
  }

  /**
   * Finish a move once every room is joined on the new connection and every send written on
   * the old one is answered (so one user's sends keep their order): close the old connection.
   * Then, moving or not, the sends that waited go out, in the order they were made.
   */
  settleMove() {
    if (this.retiring) {
      const everyRoomIn = [...this.rooms.values()].every((room) => room.state === 'joined');
      const oldUnanswered = [...this.pending.values()].some((p) => p.written && p.socket === this.retiring);
      if (!everyRoomIn || oldUnanswered) return;
      this.closeRetiring();
    }
    if (!this.connected) return;
    for (const p of this.pending.values()) {
      if (!p.written && this.rooms.get(p.room)?.state === 'joined') this.writeSend(p);
    }
  }

  /** Close the connection being left, if any. */
  closeRetiring() {
    clearTimeout(this.retireTimer);
    const socket = this.retiring;
    this.retiring = null;
    if (!socket) return;
    socket.onmessage = socket.onclose = null;
    socket.close(1000, 'moved');
  }

  detach() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.onopen = socket.onmessage = socket.onclose = null;
  }

  failAll(err) {
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
    for (const p of this.pings.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pings.clear();
    for (const r of this.rooms.values()) {
      for (const w of r.joinWaiters) w.reject(err);
      r.joinWaiters = [];
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', { state });
  }

  // ---- frames ----

  write(frame) {
    if (!this.connected) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  sendJoin(r) {
    r.state = 'joining';
    r.askedSince = r.synced ? r.seq : null;
    this.write(r.askedSince === null ? { op: 'join', room: r.name } : { op: 'join', room: r.name, since: r.askedSince });
  }

  writeSend(entry) {
    entry.written = this.write({ op: 'send', room: entry.room, text: entry.text, cid: entry.cid });
    entry.socket = entry.written ? this.socket : null;
  }

  onFrame(data) {
    const f = parseFrame(data);
    if (f === null) {
      this.emit('error', new RoomshardError('bad_frame', 'the server sent a frame that is not JSON'));
      return undefined;
    }
    return this.handle(f);
  }

  /** Act on one parsed server frame. */
  handle(f) {
    switch (f.op) {
      case 'joined': return this.onJoined(f);
      case 'msg': { const r = this.rooms.get(f.room); if (r) this.deliver(r, f, false); return; }
      case 'presence': return this.onPresence(f);
      case 'left': return undefined; // the room was already forgotten by leave()
      case 'pong': {
        const p = this.pings.get(f.cid);
        if (p) { clearTimeout(p.timer); this.pings.delete(f.cid); p.resolve(); }
        return undefined;
      }
      case 'error': return this.onError(f);
      case 'reconnect': {
        // The node is going away. Asked to come back at once, connect again through the
        // cluster's entry point while this connection still delivers, and close it once every
        // room is joined on the new one (make-before-break): the rooms never go quiet. Asked to
        // wait, leave now and come back after a jittered wait of at least that long.
        const socket = this.socket;
        this.detach();
        for (const r of this.rooms.values()) if (r.state === 'joined') r.state = 'joining';
        this.attempt = 0;
        const reason = `server asked to reconnect (${f.reason ?? 'no reason'})`;
        if (socket && this.wanted && !(f.after_ms > 0)) {
          // Sends already written stay written: their echo (a message carrying their cid)
          // comes on either connection, so none is posted twice.
          this.retire(socket);
          this.setState('reconnecting');
          this.emit('reconnecting', { delayMs: 0, reason, code: undefined, attempt: 0 });
          void this.open();
          return undefined;
        }
        for (const p of this.pending.values()) p.written = false;
        if (socket) socket.close(1000, 'reconnecting');
        if (this.wanted) this.scheduleReconnect(reason, undefined, f.after_ms);
        return undefined;
      }
      default: return undefined; // ops from a later protocol version are ignored
    }
  }

  onJoined(f) {
    const r = this.rooms.get(f.room);
    if (!r) return;
    const history = Array.isArray(f.history) ? f.history : [];
    const roomSeq = typeof f.seq === 'number' ? f.seq : 0;
    // `since` for this answer: what we asked for, or (an unasked `joined` after the owner
    // changed) the last seq we had.
    const since = r.askedSince ?? (r.synced ? r.seq : null);
    if (since !== null) {
      const first = history.length ? history[0].seq : roomSeq + 1;
      if (roomSeq < since) {
        // The room restarted without the messages we saw (owner lost, one copy): its seq went back.
        this.emit('gap', { room: r.name, from: since + 1, to: null, reset: true, seq: roomSeq });
        r.seq = roomSeq;
      } else if (first > since + 1) {
        this.emit('gap', { room: r.name, from: since + 1, to: first - 1, reset: false, seq: roomSeq });
      }
    }
    for (const m of history) this.deliver(r, { ...m, room: r.name }, true);
    r.seq = Math.max(r.seq, roomSeq);
    r.synced = true;
    r.askedSince = null;
    r.state = 'joined';
    r.members = new Set(Array.isArray(f.members) ? f.members : []);
    const payload = { room: r.name, seq: roomSeq, members: this.members(r.name), resumed: since !== null };
    this.emit('joined', payload);
    for (const w of r.joinWaiters) w.resolve(payload);
    r.joinWaiters = [];
    // Sends queued while this room was not joined go out now, in the order they were made (when
    // moving, once the old connection's sends are answered too).
    this.settleMove();
  }

  deliver(r, m, replayed) {
    const id = m.id == null ? null : String(m.id);
    if (id !== null) {
      if (r.ids.has(id)) return; // seen already: a replay overlapping live delivery
      r.ids.add(id);
      if (r.ids.size > this.options.dedupeWindow) r.ids.delete(r.ids.values().next().value);
    }
    if (!replayed && r.state === 'joined' && r.seq > 0 && m.seq > r.seq + 1) {
      this.emit('gap', { room: r.name, from: r.seq + 1, to: m.seq - 1, reset: false, seq: m.seq });
    }
    if (typeof m.seq === 'number') r.seq = Math.max(r.seq, m.seq);
    const mine = m.cid != null ? this.pending.get(m.cid) : undefined;
    if (mine) {
      clearTimeout(mine.timer);
      this.pending.delete(m.cid);
      mine.resolve({ seq: m.seq, id, ts: m.ts, user: m.user });
      if (this.retiring) this.settleMove();
    }
    this.emit('message', { room: r.name, seq: m.seq, id, user: m.user, text: m.text, ts: m.ts, cid: m.cid, mine: Boolean(mine), replayed });
  }

  onPresence(f) {
    const r = this.rooms.get(f.room);
    if (!r) return;
    if (f.event === 'join') r.members.add(f.user);
    else if (f.event === 'leave') r.members.delete(f.user);
    this.emit('presence', { room: f.room, user: f.user, event: f.event, members: this.members(f.room) });
  }

  onError(f) {
    const err = new RoomshardError(f.code ?? 'internal', f.message ?? '', f.room);
    const p = f.cid != null ? this.pending.get(f.cid) : undefined;
    if (p) {
      clearTimeout(p.timer);
      this.pending.delete(f.cid);
      p.reject(err);
      if (this.retiring) this.settleMove();
      return;
    }
    const r = f.room != null ? this.rooms.get(f.room) : undefined;
    if (r && r.state === 'joining' && TRANSIENT.has(err.code)) {
      // The room is between owners or its owner is busy: ask again shortly.
      setTimeout(() => { if (this.rooms.get(r.name) === r && r.state === 'joining') this.sendJoin(r); },
        Math.round(this.options.backoffInitialMs * (0.5 + this.random() / 2)));
      this.emit('error', err);
      return;
    }
    if (r && r.state === 'joining') {
      // A refused join (bad room name, too many rooms): the room is not kept.
      this.rooms.delete(r.name);
      if (!r.joinWaiters.length) this.emit('error', err);
      for (const w of r.joinWaiters) w.reject(err);
      r.joinWaiters = [];
      return;
    }
    this.emit('error', err);
  }
}

// Unit tests of roomshard.js against the scripted fake server (test/fake-server.js).

import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { RoomshardClient, RoomshardError } from '../roomshard.js';
import { FakeServer, msg, joined } from './fake-server.js';

let server;
let client;

beforeEach(async () => { server = await FakeServer.start(); });
afterEach(async () => { client?.close(); client = undefined; await server.stop(); });

/** A client with fast, deterministic backoff, collecting its events. */
function newClient(options = {}) {
  client = new RoomshardClient({
    url: server.url, user: 'alice', WebSocket, backoffInitialMs: 20, backoffMaxMs: 200,
    pingIntervalMs: 0, random: () => 0.5, ...options,
  });
  client.seen = { message: [], gap: [], error: [], reconnecting: [], presence: [], closed: [] };
  for (const type of Object.keys(client.seen)) client.on(type, (e) => client.seen[type].push(e));
  return client;
}

/** Connects, joins `room` and answers the join with `frame`; returns the server's connection. */
async function connectAndJoin(c, room, frame) {
  c.connect();
  const conn = await server.accept();
  const joining = c.join(room);
  assert.deepEqual(await conn.next('join'), { op: 'join', room });
  conn.send(frame);
  await joining;
  return conn;
}

/** Reads the next `send` on `conn`, checks its text, and echoes it as message `seq` of lobby. */
async function echoNextSend(conn, seq, text) {
  const frame = await conn.next('send');
  assert.equal(frame.text, text);
  conn.send(msg('lobby', seq, { cid: frame.cid, user: 'alice', text }));
}

/** Waits until `pred()` holds (checked on every event-loop turn), at most 3 s. */
async function until(pred, what) {
  const deadline = Date.now() + 3_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test('the user name goes in the query and a send resolves with the seq and id of its echo', async () => {
  const c = newClient();
  const conn = await connectAndJoin(c, 'lobby', joined('lobby', 0));
  assert.equal(conn.query.get('user'), 'alice');
  const sent = c.send('lobby', 'hello');
  const frame = await conn.next('send');
  assert.equal(frame.text, 'hello');
  assert.equal(typeof frame.cid, 'string');
  conn.send(msg('lobby', 1, { user: 'alice', text: 'hello', cid: frame.cid, id: '9007199254740993' }));
  assert.deepEqual(await sent, { seq: 1, id: '9007199254740993', ts: 1_700_000_000_001, user: 'alice' });
  assert.equal(c.seen.message.length, 1);
  assert.equal(c.seen.message[0].mine, true);
  assert.equal(c.lastSeq('lobby'), 1);
});

test('a refused send rejects with the server\'s code and message and the connection stays usable', async () => {
  const c = newClient();
  const conn = await connectAndJoin(c, 'lobby', joined('lobby', 0));
  const sent = c.send('lobby', 'x'.repeat(10));
  const frame = await conn.next('send');
  conn.send({ op: 'error', code: 'too_large', message: 'text is 10 bytes, the limit is 5 bytes', cid: frame.cid, room: 'lobby' });
  await assert.rejects(sent, (err) => err instanceof RoomshardError && err.code === 'too_large' && /limit is 5/.test(err.message) && err.room === 'lobby');
  const pong = c.ping();
  const ping = await conn.next('ping');
  conn.send({ op: 'pong', cid: ping.cid });
  assert.equal(typeof await pong, 'number');
});

test('a reconnect frame makes the client come back and re-join with since set to the last seq it saw', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 3, [1, 2, 3]));
  first.send(msg('lobby', 4));
  await until(() => c.lastSeq('lobby') === 4, 'seq 4');
  first.send({ op: 'reconnect', reason: 'draining' });
  const second = await server.accept();
  assert.deepEqual(await second.next('join'), { op: 'join', room: 'lobby', since: 4 });
  second.send(joined('lobby', 6, [5, 6]));
  await until(() => c.seen.message.length === 6, 'six messages');
  assert.deepEqual(c.seen.message.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(c.seen.gap, []);
  assert.equal(c.seen.reconnecting[0].reason, 'server asked to reconnect (draining)');
});

test('told to reconnect with no wait, the client joins on a new connection before leaving the old one, which delivers until then', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 3, [1, 2, 3]));
  const early = c.send('lobby', 'just before the move');
  const earlyFrame = await first.next('send');
  first.send({ op: 'reconnect', reason: 'draining', after_ms: 0 });
  const second = await server.accept();
  assert.deepEqual(await second.next('join'), { op: 'join', room: 'lobby', since: 3 });
  // The old connection still delivers while the new one joins: the echo of the early send too.
  first.send(msg('lobby', 4, { cid: earlyFrame.cid, user: 'alice', text: 'just before the move' }));
  assert.equal((await early).seq, 4);
  first.send(msg('lobby', 5));
  await until(() => c.lastSeq('lobby') === 5, 'seq 5 on the old connection');
  // The new one's replay repeats 4 and 5: each reaches the application once.
  second.send(joined('lobby', 6, [4, 5, 6]));
  assert.equal(await first.closed, 1000, 'the old connection is closed once the room is joined');
  await until(() => c.seen.message.length === 6, 'six messages');
  assert.deepEqual(c.seen.message.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(c.seen.gap, []);
  const late = c.send('lobby', 'after the move');
  // The first send on the new connection is the late one: the early one was written once.
  await echoNextSend(second, 7, 'after the move');
  assert.equal((await late).seq, 7);
});

test('while moving, a new send waits until the sends written on the old connection are answered, so they keep their order', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 2, [1, 2]));
  const early = c.send('lobby', 'first');
  const earlyFrame = await first.next('send');
  first.send({ op: 'reconnect', reason: 'draining' });
  const second = await server.accept();
  await second.next('join');
  second.send(joined('lobby', 2, []));
  await until(() => c.seen.message.length === 2 && c.connected, 'joined on the new connection');
  const late = c.send('lobby', 'second');
  // The early send is unanswered: the late one is held, and the old connection stays open.
  const heldFor = await Promise.race([
    first.closed.then(() => 'closed'),
    new Promise((resolve) => setTimeout(() => resolve('held'), 60)),
  ]);
  assert.equal(heldFor, 'held', 'the old connection stays while a send written on it is unanswered');
  // Its echo arrives (here on the new connection, as a room message carrying its cid).
  second.send(msg('lobby', 3, { cid: earlyFrame.cid, user: 'alice', text: 'first' }));
  assert.equal((await early).seq, 3);
  assert.equal(await first.closed, 1000, 'then the old connection is closed');
  await echoNextSend(second, 4, 'second');
  assert.equal((await late).seq, 4);
});

test('told to reconnect after a wait, the client leaves first and comes back no sooner', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 1, [1]));
  first.send({ op: 'reconnect', reason: 'busy', after_ms: 120 });
  assert.equal(await first.closed, 1000, 'closed before reconnecting');
  assert.equal(c.seen.reconnecting[0].delayMs >= 120, true);
  const second = await server.accept();
  assert.deepEqual(await second.next('join'), { op: 'join', room: 'lobby', since: 1 });
});

test('a dropped connection is retried with growing, jittered delays until a node answers', async () => {
  const c = newClient({ random: () => 0 });
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 2, [1, 2]));
  // Nothing listens on this port any more: every attempt fails until the server is back.
  const port = new URL(server.url).port;
  await server.stop();
  first.kill();
  await until(() => c.seen.reconnecting.length >= 4, 'four reconnect attempts');
  const delays = c.seen.reconnecting.slice(0, 4).map((e) => e.delayMs);
  // Half the ceiling with random() = 0: 10, 20, 40, 80 ms (ceiling 20 ms doubling, max 200).
  assert.deepEqual(delays, [10, 20, 40, 80]);
  server = await FakeServer.start(Number(port));
  const back = await server.accept();
  assert.deepEqual(await back.next('join'), { op: 'join', room: 'lobby', since: 2 });
  back.send(joined('lobby', 2, []));
  await until(() => c.state === 'open' && c.connected, 'open again');
  assert.deepEqual(c.seen.gap, []);
});

test('a message delivered twice (replay overlapping live delivery) is reported once', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 2, [1, 2]));
  first.send(msg('lobby', 3));
  first.send(msg('lobby', 3));
  first.kill();
  const second = await server.accept();
  assert.deepEqual(await second.next('join'), { op: 'join', room: 'lobby', since: 3 });
  // A node may replay what the client already has, and deliver a live one in the same breath.
  second.send(joined('lobby', 4, [3, 4]));
  second.send(msg('lobby', 4));
  second.send(msg('lobby', 5));
  await until(() => c.lastSeq('lobby') === 5, 'seq 5');
  assert.deepEqual(c.seen.message.map((m) => m.seq), [1, 2, 3, 4, 5]);
});

test('a gap is reported when the room\'s history no longer reaches back to since', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 5, [4, 5]));
  first.kill();
  const second = await server.accept();
  assert.deepEqual(await second.next('join'), { op: 'join', room: 'lobby', since: 5 });
  second.send(joined('lobby', 12, [9, 10, 11, 12]));
  await until(() => c.lastSeq('lobby') === 12, 'seq 12');
  assert.deepEqual(c.seen.gap, [{ room: 'lobby', from: 6, to: 8, reset: false, seq: 12 }]);
  assert.deepEqual(c.seen.message.map((m) => m.seq), [4, 5, 9, 10, 11, 12]);
});

test('a room that restarted with a lower seq is reported as a reset and followed from there', async () => {
  const c = newClient();
  const conn = await connectAndJoin(c, 'lobby', joined('lobby', 7, [7]));
  // The owner was lost and the room restarted empty: the node sends a fresh `joined`.
  conn.send(joined('lobby', 0, []));
  await until(() => c.seen.gap.length === 1, 'a gap');
  assert.deepEqual(c.seen.gap[0], { room: 'lobby', from: 8, to: null, reset: true, seq: 0 });
  conn.send(msg('lobby', 1, { id: '5001' }));
  await until(() => c.lastSeq('lobby') === 1, 'seq 1');
  assert.equal(c.seen.message.at(-1).id, '5001');
});

test('a send made while reconnecting goes out after the re-join, and one echoed in the replay resolves', async () => {
  const c = newClient();
  const first = await connectAndJoin(c, 'lobby', joined('lobby', 0));
  const early = c.send('lobby', 'before the drop');
  const earlyFrame = await first.next('send');
  first.kill(); // the node dies before echoing it; it did reach the room's owner
  await until(() => !c.connected, 'disconnected');
  const late = c.send('lobby', 'while away');
  const second = await server.accept();
  await second.next('join');
  const echo = msg('lobby', 1, { cid: earlyFrame.cid, user: 'alice', text: 'before the drop' });
  second.send({ op: 'joined', room: 'lobby', seq: 1, members: ['alice'], history: [echo] });
  assert.equal((await early).seq, 1);
  const lateFrame = await second.next('send');
  assert.equal(lateFrame.text, 'while away');
  second.send(msg('lobby', 2, { cid: lateFrame.cid, user: 'alice', text: 'while away' }));
  assert.equal((await late).seq, 2);
  assert.deepEqual(c.seen.message.map((m) => m.seq), [1, 2]);
});

test('an unanswered send rejects with timeout instead of hanging', async () => {
  const c = newClient({ sendTimeoutMs: 50 });
  const conn = await connectAndJoin(c, 'lobby', joined('lobby', 0));
  const sent = c.send('lobby', 'into the void');
  await conn.next('send');
  await assert.rejects(sent, (err) => err.code === 'timeout');
});

test('a room between owners is joined again when the node answers room_unavailable', async () => {
  const c = newClient();
  c.connect();
  const conn = await server.accept();
  const joining = c.join('lobby');
  await conn.next('join');
  conn.send({ op: 'error', code: 'room_unavailable', message: 'hand-off in progress', room: 'lobby' });
  assert.deepEqual(await conn.next('join'), { op: 'join', room: 'lobby' });
  conn.send(joined('lobby', 0));
  assert.equal((await joining).room, 'lobby');
  assert.equal(c.seen.error[0].code, 'room_unavailable');
});

test('an expired token is replaced by calling the token function again', async () => {
  const tokens = ['expired-token', 'fresh-token'];
  const c = newClient({ user: undefined, token: () => tokens.shift() });
  c.connect();
  const refused = await server.accept();
  assert.equal(refused.query.get('token'), 'expired-token');
  assert.equal(refused.query.get('user'), null);
  refused.close(1008, 'token expired');
  const accepted = await server.accept();
  assert.equal(accepted.query.get('token'), 'fresh-token');
  await until(() => c.connected, 'connected');
  assert.equal(c.seen.error[0].code, 'unauthorized');
  assert.equal(c.seen.error[0].message, 'unauthorized: token expired');
});

test('a fixed token that is refused ends the client and rejects what was waiting', async () => {
  const c = newClient({ user: undefined, token: 'expired-token' });
  c.connect();
  const conn = await server.accept();
  const joining = c.join('lobby');
  await conn.next('join');
  conn.close(1008, 'token expired');
  await assert.rejects(joining, (err) => err.code === 'unauthorized');
  await until(() => c.state === 'closed', 'closed');
  assert.equal(c.seen.closed[0].code, 1008);
  assert.equal(c.seen.reconnecting.length, 0);
});

test('a join with since asks only for what came after it', async () => {
  const c = newClient();
  c.connect();
  const conn = await server.accept();
  const joining = c.join('lobby', { since: 40 });
  assert.deepEqual(await conn.next('join'), { op: 'join', room: 'lobby', since: 40 });
  conn.send(joined('lobby', 42, [41, 42]));
  assert.equal((await joining).resumed, true);
  assert.deepEqual(c.seen.message.map((m) => m.seq), [41, 42]);
  assert.deepEqual(c.seen.gap, []);
});

test('presence events keep the member list', async () => {
  const c = newClient();
  const conn = await connectAndJoin(c, 'lobby', joined('lobby', 0, [], ['alice', 'carol']));
  conn.send({ op: 'presence', room: 'lobby', user: 'bob', event: 'join' });
  conn.send({ op: 'presence', room: 'lobby', user: 'carol', event: 'leave' });
  await until(() => c.seen.presence.length === 2, 'two presence events');
  assert.deepEqual(c.members('lobby'), ['alice', 'bob']);
});

test('without a WebSocket option or a global one the constructor says what to pass', () => {
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => new RoomshardClient({ url: 'ws://x/ws', user: 'a' }), /`WebSocket` option/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
});

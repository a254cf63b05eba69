// A minimal command-line chat on Node.js 20: joins a room, prints every message (and any gap),
// and sends each line typed on stdin.
//
//   npm install roomshard-client ws
//   node chat.mjs ws://127.0.0.1:8080/ws alice lobby
//
// Node.js 20 has no global WebSocket, so the `ws` package's constructor is passed in; on
// Node.js 22+ and in browsers the option can be left out.

import readline from 'node:readline';
import WebSocket from 'ws';
import { RoomshardClient } from 'roomshard-client';

const [url = 'ws://127.0.0.1:8080/ws', user = 'alice', room = 'lobby'] = process.argv.slice(2);

const client = new RoomshardClient({ url, user, WebSocket });
client.on('state', ({ state }) => console.error(`[${state}]`));
client.on('reconnecting', ({ delayMs, reason }) => console.error(`[${reason}; retrying in ${delayMs} ms]`));
client.on('gap', ({ from, to }) => console.error(`[missed messages ${from}..${to ?? '?'}: history no longer reaches back]`));
client.on('message', (m) => console.log(`#${m.seq} ${m.user}: ${m.text}`));
client.on('error', (err) => console.error(`[${err.message}]`));
client.connect();

const { members } = await client.join(room);
console.error(`[joined ${room}; here: ${members.join(', ')}]`);

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    const { seq } = await client.send(room, line);
    console.error(`[sent as #${seq}]`);
  } catch (err) {
    console.error(`[not sent: ${err.message}]`);
  }
}
client.close();

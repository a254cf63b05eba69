// Types for roomshard.js, the client for roomshard wire protocol v1 (docs/protocol.md).

/** Close codes the node uses. */
export declare const CLOSE_GOING_AWAY: 1001;
export declare const CLOSE_POLICY: 1008;
export declare const CLOSE_TOO_BIG: 1009;
export declare const CLOSE_SLOW_CONSUMER: 1013;

/** Protocol v1 error codes, plus the client's own (`timeout`, `closed`, `not_connected`, `bad_frame`). */
export type ErrorCode =
  | 'bad_request' | 'unauthorized' | 'forbidden' | 'not_joined' | 'too_large'
  | 'rate_limited' | 'room_unavailable' | 'overloaded' | 'internal'
  | 'timeout' | 'closed' | 'not_connected' | 'bad_frame';

/** Anything constructible like the WHATWG WebSocket (browsers, Node.js 22+, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // The client assigns these; their event parameters differ between implementations (the
  // client reads only `data`, `code` and `reason`), hence `any`.
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /**
   * The cluster's WebSocket endpoint, e.g. `wss://chat.example.com/ws` (a Service or an
   * Ingress). An array is tried in turn, one entry per attempt; a function is called before
   * every attempt.
   */
  url: string | string[] | (() => string | string[] | Promise<string | string[]>);
  /** User name, when the cluster runs without authentication (`?user=`). */
  user?: string;
  /**
   * Signed token (`?token=`). A function is called before every attempt, so an expired token
   * can be replaced; with a fixed string a refused identity (close 1008) ends the client.
   */
  token?: string | (() => string | Promise<string>);
  /** WebSocket constructor; required on Node.js 20 (no global WebSocket), e.g. `ws`'s default export. */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay ceiling (ms, default 500); doubles per failed attempt. */
  backoffInitialMs?: number;
  /** Largest reconnect delay (ms, default 15000). */
  backoffMaxMs?: number;
  /** Keep-alive ping period (ms, default 25000; 0 turns it off). */
  pingIntervalMs?: number;
  /** How long a `send` or `ping` waits for its answer (ms, default 10000). */
  sendTimeoutMs?: number;
  /** Message ids remembered per room to drop duplicates (default 2048). */
  dedupeWindow?: number;
  /**
   * When a node asks the client to move (`reconnect` with no wait), the old connection keeps
   * delivering until every room is joined on the new one, at most this long (ms, default 5000).
   */
  retireMs?: number;
  /** Random source in [0, 1) for jitter (tests pass a fixed one). */
  random?: () => number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface Message {
  room: string;
  seq: number;
  /** Cluster-unique 64-bit id as a decimal string. */
  id: string;
  user: string;
  text: string;
  /** Unix milliseconds at which the room's owner accepted it. */
  ts: number;
  cid?: string;
  /** Sent by this client. */
  mine: boolean;
  /** Came from a `joined` replay rather than live. */
  replayed: boolean;
}

export interface Joined {
  room: string;
  /** The room's last seq at the time of joining. */
  seq: number;
  members: string[];
  /** A re-join after a reconnect (with `since`), not the first join. */
  resumed: boolean;
}

export interface Gap {
  room: string;
  /** First missed seq. */
  from: number;
  /** Last missed seq; null when the room restarted (`reset`) and the end is unknown. */
  to: number | null;
  /** The room's seq went back: it restarted without the messages seen before. */
  reset: boolean;
  /** The room's seq when the gap was noticed. */
  seq: number;
}

export interface Presence {
  room: string;
  user: string;
  event: 'join' | 'leave';
  members: string[];
}

export interface Sent {
  seq: number;
  id: string;
  ts: number;
  user: string;
}

export interface Events {
  state: { state: ConnectionState };
  joined: Joined;
  message: Message;
  presence: Presence;
  gap: Gap;
  error: RoomshardError;
  reconnecting: { delayMs: number; reason: string; code?: number; attempt: number };
  closed: { code: number; reason: string; error: RoomshardError };
}

export declare class RoomshardError extends Error {
  readonly code: ErrorCode | string;
  readonly room?: string;
  constructor(code: string, message: string, room?: string);
}

export declare class RoomshardClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly connected: boolean;
  on<K extends keyof Events>(type: K, listener: (payload: Events[K]) => void): () => void;
  connect(): void;
  close(): void;
  /** `since`: resume from a seq the application kept (only later messages are replayed). */
  join(room: string, options?: { since?: number }): Promise<Joined>;
  leave(room: string): void;
  send(room: string, text: string): Promise<Sent>;
  ping(): Promise<number>;
  lastSeq(room: string): number;
  members(room: string): string[];
}

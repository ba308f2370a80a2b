/**
 * The stacks measured side by side. Each runs as one server kind (`servers/<stack>.ts`, its own
 * process) driven by that stack's own client (`load/clients/`), so every figure includes both
 * ends of the stack.
 */

export const STACKS = [
  'ws-echo',
  'duplexwire-ws',
  'uws-echo',
  'duplexwire-uws',
  'socketio',
  'socketio-msgpack',
] as const;
export type Stack = (typeof STACKS)[number];

/** The duplexwire stacks and the raw echo of the transport each runs on. */
export const DUPLEXWIRE_STACKS = ['duplexwire-ws', 'duplexwire-uws'] as const;
export type DuplexwireStack = (typeof DUPLEXWIRE_STACKS)[number];

export const RAW_TRANSPORT: Readonly<Record<DuplexwireStack, Stack>> = {
  'duplexwire-ws': 'ws-echo',
  'duplexwire-uws': 'uws-echo',
};

/** What each stack is, for the table's legend. */
export const STACK_LABELS: Readonly<Record<Stack, string>> = {
  'ws-echo': 'raw ws echo (ws server, ws client)',
  'duplexwire-ws': 'duplexwire, ws server transport, ws client transport',
  'uws-echo': 'raw uWebSockets.js echo (uWS server, ws client)',
  'duplexwire-uws': 'duplexwire, uWebSockets.js server transport, ws client transport',
  socketio: 'Socket.IO 4.8, websocket transport only, default parser, emit with ack',
  'socketio-msgpack': 'Socket.IO 4.8, websocket transport only, socket.io-msgpack-parser, emit with ack',
};

export function isDuplexwire(stack: Stack): stack is DuplexwireStack {
  return stack === 'duplexwire-ws' || stack === 'duplexwire-uws';
}

/**
 * Byte 0 of a raw signal (64 bytes, not echoed, counted by the server). Request-reply payloads
 * are filled with 7 and the flow-control "sync" message starts with 2: both are echoed.
 */
export const RAW_SIGNAL_TAG = 1;
export const RAW_SYNC_TAG = 2;

/** Names used on the duplexwire and Socket.IO stacks. */
export const ECHO = 'echo';
export const SIGNAL = 'sig';

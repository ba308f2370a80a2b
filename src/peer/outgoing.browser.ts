/**
 * `outgoing.ts` for browsers (bundlers pick this file through the package.json `browser` field):
 * the browser's WebSocket sends one buffer per message, so every message is encoded whole. Same
 * exports and results; the split encoders stay out of the bundle.
 */
import { encodeReply, encodeRequest, encodeSignal, type RequestIdInput } from '../../protocol/encode.ts';
import type { Payload } from '../../protocol/types.ts';
import type { SendResult, TransportSocket } from '../../transports/types.ts';

/** Always one buffer here (the type is shared with the Node implementation). */
export type OutgoingMessage = Uint8Array | readonly [head: Uint8Array, payload: Uint8Array];

export function outgoingRequest(_socket: TransportSocket, id: number, name: string, payload: Payload): OutgoingMessage {
  return encodeRequest(id, name, payload);
}

export function outgoingReply(_socket: TransportSocket, id: RequestIdInput, payload: Payload): OutgoingMessage {
  return encodeReply(id, payload);
}

export function outgoingSignal(_socket: TransportSocket, name: string, payload: Payload): OutgoingMessage {
  return encodeSignal(name, payload);
}

export function sendOutgoing(socket: TransportSocket, message: OutgoingMessage): SendResult {
  return socket.send(message as Uint8Array);
}

/**
 * How the peer engine encodes and sends its messages over a socket. This is the Node
 * implementation; browsers get `outgoing.browser.ts` (package.json `browser` field), where every
 * message is one buffer, as the browser's WebSocket sends nothing else.
 *
 * A payload from `SEPARATE_PAYLOAD_BYTES` on goes out as a write buffer of its own where the
 * transport can (`TransportSocket.sendParts`, the ws adapter), instead of being copied into the
 * message: a 64 KiB body chunk of the tunnel is then written from the buffer it was read into.
 * Below that size the copy costs less than the extra buffer.
 */
import {
  encodeReply,
  encodeReplyParts,
  encodeRequest,
  encodeRequestParts,
  encodeSignal,
  encodeSignalParts,
  joinParts,
  type MessageParts,
  type RequestIdInput,
} from '../../protocol/encode.ts';
import type { Payload } from '../../protocol/types.ts';
import type { SendResult, TransportSocket } from '../../transports/types.ts';

/** A message ready to send: one buffer, or a head and a payload sent back to back without being joined. */
export type OutgoingMessage = Uint8Array | MessageParts;

const SEPARATE_PAYLOAD_BYTES = 1024;

function separate(socket: TransportSocket, payload: Payload): boolean {
  return payload.data.length >= SEPARATE_PAYLOAD_BYTES && socket.sendParts !== undefined;
}

export function outgoingRequest(socket: TransportSocket, id: number, name: string, payload: Payload): OutgoingMessage {
  return separate(socket, payload) ? encodeRequestParts(id, name, payload) : encodeRequest(id, name, payload);
}

export function outgoingReply(socket: TransportSocket, id: RequestIdInput, payload: Payload): OutgoingMessage {
  return separate(socket, payload) ? encodeReplyParts(id, payload) : encodeReply(id, payload);
}

export function outgoingSignal(socket: TransportSocket, name: string, payload: Payload): OutgoingMessage {
  return separate(socket, payload) ? encodeSignalParts(name, payload) : encodeSignal(name, payload);
}

export function sendOutgoing(socket: TransportSocket, message: OutgoingMessage): SendResult {
  if (message instanceof Uint8Array) return socket.send(message);
  return socket.sendParts?.(message[0], message[1]) ?? socket.send(joinParts(message));
}

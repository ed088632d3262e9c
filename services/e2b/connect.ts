// The Connect protocol (connectrpc.com/docs/protocol) as E2B's envd speaks it with the JSON codec: unary calls are a
// JSON body in and out; server streams are enveloped messages (one flag byte, a 4-byte big-endian length, the JSON),
// ending with an end-of-stream envelope (flag 0x02) that carries the error, if any. No HTTP here: the routes frame.
import { AppError } from '../errors.js'

/** Connect's error codes, and the HTTP status a unary error answers with. */
export const CONNECT_STATUS = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 400,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
  unauthenticated: 401
} as const
export type ConnectCode = keyof typeof CONNECT_STATUS

/** An RPC's failure as the client reads it: a Connect code and a message. */
export class ConnectError extends Error {
  constructor (readonly code: ConnectCode, message: string) {
    super(message)
  }
}

/** Our errors (AppError codes and statuses) as Connect errors: what the E2B SDK turns into its own error classes. */
export function toConnectError (err: unknown): ConnectError {
  if (err instanceof ConnectError) return err
  if (!(err instanceof AppError)) return new ConnectError('internal', 'internal error')
  if (err.code === 'file_not_found' || err.code === 'process_not_found' || err.code === 'sandbox_not_found') return new ConnectError('not_found', err.message)
  if (err.code === 'path_outside_workspace') return new ConnectError('permission_denied', err.message)
  if (err.code === 'disk_full') return new ConnectError('resource_exhausted', err.message)
  if (err.code === 'process_exited' || err.code === 'no_stdin' || err.code === 'not_a_terminal') return new ConnectError('failed_precondition', err.message)
  const byStatus: Record<number, ConnectCode> = {
    400: 'invalid_argument',
    401: 'unauthenticated',
    403: 'permission_denied',
    404: 'not_found',
    409: 'already_exists',
    410: 'unavailable',
    413: 'resource_exhausted',
    429: 'resource_exhausted',
    501: 'unimplemented',
    503: 'unavailable',
    504: 'deadline_exceeded',
    507: 'resource_exhausted'
  }
  return new ConnectError(byStatus[err.statusCode] ?? (err.statusCode >= 500 ? 'unavailable' : 'invalid_argument'), err.message)
}

export function errorJson (err: ConnectError): { code: ConnectCode, message: string } {
  return { code: err.code, message: err.message }
}

/** One enveloped message: flags 0 for a message, 2 for the end of the stream. */
export function envelope (body: unknown, end = false): Buffer {
  const json = Buffer.from(JSON.stringify(body))
  const head = Buffer.alloc(5)
  head[0] = end ? 0x02 : 0x00
  head.writeUInt32BE(json.length, 1)
  return Buffer.concat([head, json])
}

/** The end of a stream: `{}`, or the error that ended it. */
export function endOfStream (err?: ConnectError): Buffer {
  return envelope(err ? { error: errorJson(err) } : {}, true)
}

/** The one message of a server-streaming request's body (a client sends exactly one); 400 when it is not that. */
export function readEnvelope (body: Buffer, maxBytes: number): unknown {
  if (body.length < 5) throw new ConnectError('invalid_argument', 'the request is not an enveloped Connect message')
  if (body[0]! & 0x01) throw new ConnectError('unimplemented', 'compressed messages are not supported')
  const length = body.readUInt32BE(1)
  if (length > maxBytes) throw new ConnectError('resource_exhausted', `messages are limited to ${maxBytes} bytes`)
  if (body.length !== 5 + length) throw new ConnectError('invalid_argument', 'the request holds other than one message')
  return parseJson(body.subarray(5))
}

export function parseJson (body: Buffer): unknown {
  try {
    return body.length ? JSON.parse(body.toString('utf8')) : {}
  } catch {
    throw new ConnectError('invalid_argument', 'the request body is not JSON')
  }
}

/** Protobuf's JSON mapping of a timestamp. */
export const timestamp = (seconds: number) => new Date(seconds * 1000).toISOString()

/** A field of a request message, checked: proto3 JSON leaves zero values out. */
export function field<T> (message: unknown, name: string, kind: 'string' | 'number' | 'boolean' | 'object' | 'array', fallback: T): T {
  const value = (message as Record<string, unknown> | null)?.[name]
  if (value === undefined || value === null) return fallback
  if (kind === 'number' && typeof value === 'string' && /^\d+$/.test(value)) return Number(value) as T
  const fits = kind === 'array' ? Array.isArray(value) : kind === 'object' ? typeof value === 'object' && !Array.isArray(value) : typeof value === kind // eslint-disable-line valid-typeof -- kind is one of the primitive names
  if (!fits) throw new ConnectError('invalid_argument', `${name} must be ${kind === 'array' ? 'an' : 'a'} ${kind}`)
  return value as T
}

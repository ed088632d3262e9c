// What every protocol's routes share, written once: the error handler (each protocol shapes only its body), the
// signal that a client went away, and the WebSocket heartbeat.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { AppError, DependencyError } from '../services/errors.js'
import { AgentGone } from '../services/sandbox/agent-client.js'

const REDIS_DOWN = /enableOfflineQueue|Connection is closed|ECONNREFUSED|ECONNRESET|Command timed out|MaxRetriesPerRequest|Reached the max retries/i

/** Any error as the AppError the client sees (foreign-protocol routes shape its body their own way). */
export function toAppError (err: FastifyError | Error): AppError {
  if (err instanceof AppError) return err
  if (err instanceof DependencyError) return err.toAppError()
  // A sandbox's agent that went away under a request (its container stopped): what every route answers for a lost one.
  if (err instanceof AgentGone) return new AppError(410, 'sandbox_lost', 'The sandbox stopped while it was being used; its variables and files are lost', 'sandbox_error')
  // Errors that third-party plugins (the rate limiter) let through from ioredis unwrapped.
  if (REDIS_DOWN.test(err.message) || err.name === 'MaxRetriesPerRequestError') return new DependencyError('redis', err.message).toAppError()
  const fe = err as FastifyError
  if (fe.validation) return new AppError(400, 'validation_error', fe.message)
  const status = fe.statusCode ?? 500
  if (status === 413) return new AppError(413, 'body_too_large', 'The request body is larger than the server accepts')
  if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new AppError(415, 'unsupported_media_type', fe.message)
  if (status >= 400 && status < 500) return new AppError(status, (fe.code ?? 'bad_request').replace(/^FST_ERR_/, '').toLowerCase(), fe.message)
  return new AppError(status >= 500 ? status : 500, 'internal_error', 'Internal server error')
}

/** The documented error body (ErrorSchema) of any error: what REST answers, and what streams send before they close. */
export function errorBody (err: unknown): { error: { message: string, type: string, code: string } & Record<string, unknown> } {
  const e = toAppError(err as Error)
  return { error: { message: e.message, type: e.type, code: e.code, ...e.extra } }
}

/** Logs an error at the level its kind deserves: overload and upstream faults are warnings, our faults errors. */
export function logError (request: FastifyRequest, err: unknown, error: AppError): void {
  if (error.code === 'capacity_exhausted') {
    request.log.warn({ code: error.code, retryAfter: error.extra.retry_after }, error.message) // overload, not a fault
  } else if (error.statusCode === 501) {
    request.log.info({ code: error.code, status: 501 }, error.message) // a feature we do not offer, asked for: not a fault
  } else if (error.statusCode === 502 || error.statusCode === 504) {
    request.log.warn({ code: error.code, status: error.statusCode }, error.message) // an upstream model's fault, not ours
  } else if (error.statusCode >= 500) {
    request.log.error({ err }, 'request failed')
  } else {
    request.log.info({ code: error.code, status: error.statusCode }, error.message)
  }
}

/**
 * An error handler for a protocol's routes: the error as an AppError (`map` first, for the protocol's own errors),
 * logged, Retry-After set, and the body in the protocol's shape.
 */
export function protocolErrors (body: (e: AppError) => unknown, map: (err: FastifyError) => AppError | null = () => null, seen?: (e: AppError) => void) {
  return (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const e = map(err) ?? toAppError(err)
    seen?.(e)
    logError(request, err, e)
    if (typeof e.extra.retry_after === 'number') reply.header('retry-after', e.extra.retry_after)
    return reply.status(e.statusCode).send(body(e))
  }
}

/** Aborts when the client closes the connection before its answer is sent (a queued create then leaves the queue). */
export function clientGone (reply: FastifyReply): AbortSignal {
  const controller = new AbortController()
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) controller.abort(new AppError(499, 'client_closed', 'The client closed the connection'))
  })
  return controller.signal
}

/**
 * Pings the peer every `intervalMs` and terminates it when the previous ping went unanswered; `onBeat` runs on each
 * round (keeping a sandbox alive, say). Stops when the socket closes.
 */
export function heartbeat (socket: WebSocket, intervalMs: number, opts: { onDead?: () => void, onBeat?: () => void } = {}): void {
  let alive = true
  socket.on('pong', () => { alive = true })
  const timer = setInterval(() => {
    if (!alive) {
      opts.onDead?.()
      socket.terminate()
      return
    }
    alive = false
    socket.ping()
    opts.onBeat?.()
  }, intervalMs)
  socket.on('close', () => clearInterval(timer))
}

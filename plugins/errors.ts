import fp from 'fastify-plugin'
import type { FastifyError } from 'fastify'
import { AppError, DependencyError } from '../services/errors.js'

const REDIS_DOWN = /enableOfflineQueue|Connection is closed|ECONNREFUSED|ECONNRESET|Command timed out|MaxRetriesPerRequest|Reached the max retries/i

/** Any error as the AppError the client sees (foreign-protocol routes shape its body their own way). */
export function toAppError (err: FastifyError | Error): AppError {
  if (err instanceof AppError) return err
  if (err instanceof DependencyError) return err.toAppError()
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

/** The one error handler: every error becomes {"error": {message, type, code}}; 5xx details stay in the log. */
export default fp(async (app) => {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const error = toAppError(err)
    if (error.code === 'capacity_exhausted') {
      request.log.warn({ code: error.code, retryAfter: error.extra.retry_after }, error.message) // overload, not a fault
    } else if (error.statusCode === 502 || error.statusCode === 504) {
      request.log.warn({ code: error.code, status: error.statusCode }, error.message) // an upstream model's fault, not ours
    } else if (error.statusCode >= 500) {
      request.log.error({ err }, 'request failed')
      if (error.code === 'redis_unavailable') app.metrics?.redisErrors.inc()
    } else {
      request.log.info({ code: error.code, status: error.statusCode }, error.message)
    }
    if (typeof error.extra.retry_after === 'number') reply.header('retry-after', error.extra.retry_after)
    return reply.status(error.statusCode).send({ error: { message: error.message, type: error.type, code: error.code, ...error.extra } })
  })
  app.setNotFoundHandler((request, reply) => {
    return reply.status(404).send({ error: { message: `Route ${request.method} ${request.url.split('?')[0]} not found`, type: 'not_found_error', code: 'route_not_found' } })
  })
}, { name: 'errors' })

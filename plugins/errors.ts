import fp from 'fastify-plugin'
import type { FastifyError } from 'fastify'
import { protocolErrors, toAppError } from './route-kit.js'

/** The one error handler: every error becomes {"error": {message, type, code}}; 5xx details stay in the log. */
export default fp(async (app) => {
  const handler = protocolErrors(e => ({ error: { message: e.message, type: e.type, code: e.code, ...e.extra } }))
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (toAppError(err).code === 'redis_unavailable') app.metrics?.redisErrors.inc()
    return handler(err, request, reply)
  })
  app.setNotFoundHandler((request, reply) => {
    return reply.status(404).send({ error: { message: `Route ${request.method} ${request.url.split('?')[0]} not found`, type: 'not_found_error', code: 'route_not_found' } })
  })
}, { name: 'errors' })

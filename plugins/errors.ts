import fp from 'fastify-plugin'
import { errorBody, protocolErrors } from './route-kit.js'

/** The one error handler: every error becomes {"error": {message, type, code}}; 5xx details stay in the log. */
export default fp(async (app) => {
  app.setErrorHandler(protocolErrors(errorBody, undefined, (e) => {
    if (e.code === 'redis_unavailable') app.metrics?.redisErrors.inc()
  }))
  app.setNotFoundHandler((request, reply) => {
    return reply.status(404).send({ error: { message: `Route ${request.method} ${request.url.split('?')[0]} not found`, type: 'not_found_error', code: 'route_not_found' } })
  })
}, { name: 'errors' })

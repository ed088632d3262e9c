import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The level of this route's access line: `debug` for the hot paths (executions, health checks). */
    accessLog?: 'debug' | 'info'
  }
}

/** A URL as logged: a key passed as `?token=` (Jupyter clients) never reaches the logs. */
export const redactUrl = (url: string): string => url.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]')

/**
 * One access line per finished request (Fastify's own two lines are off), at the route's level; and a warning for a
 * request slower than SLOW_REQUEST_MS (streams and WebSockets, long by design, are left out).
 */
export default fp(async (app) => {
  const slowMs = app.config.SLOW_REQUEST_MS
  app.addHook('onResponse', async (request, reply) => {
    const level = request.routeOptions.config?.accessLog ?? 'info'
    const line = { method: request.method, url: redactUrl(request.url), route: request.routeOptions.url ?? 'unmatched', status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }
    request.log[level](line, 'request completed')
    const streamed = String(reply.getHeader('content-type') ?? '').startsWith('text/event-stream') || request.headers.upgrade !== undefined
    if (slowMs > 0 && reply.elapsedTime >= slowMs && !streamed) request.log.warn(line, 'slow request')
  })
}, { name: 'request-log', dependencies: ['config'] })

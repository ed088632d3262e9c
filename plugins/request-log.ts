import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The level of this route's access line: `debug` for the hot paths (executions, health checks). */
    accessLog?: 'debug' | 'info'
  }
}

/** Query parameters whose value is a credential (`token`: Jupyter clients pass the API key so). */
const SECRET_PARAMS = new Set(['token', 'api_key', 'apikey', 'access_token', 'key', 'secret', 'password'])

const decoded = (text: string): string => {
  try { return decodeURIComponent(text.replace(/\+/g, ' ')) } catch { return text }
}

/**
 * A URL as logged: a credential in the query string never reaches the logs. Names are compared as the query parser
 * reads them (percent-decoded, any case), so `?%74oken=` or `?tok%65n=`, which authenticate, are redacted too.
 */
export const redactUrl = (url: string): string => {
  const at = url.indexOf('?')
  if (at < 0) return url
  const query = url.slice(at + 1).split('&').map(pair => {
    const eq = pair.indexOf('=')
    const name = decoded(eq < 0 ? pair : pair.slice(0, eq)).trim().toLowerCase()
    return SECRET_PARAMS.has(name) && eq >= 0 ? `${pair.slice(0, eq)}=[redacted]` : pair
  })
  return `${url.slice(0, at)}?${query.join('&')}`
}

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

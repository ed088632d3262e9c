import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyRequest, FastifyReply } from 'fastify'
import { AppError } from '../services/errors.js'
import { leasedStore } from '../services/rate-limit-store.js'
import type { Principal } from '../services/auth.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** preHandler limiting requests that act on one session or sandbox (by its :id). */
    limitPerTarget: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    /**
     * Counts one action that arrives over an open socket (a WebSocket message, a Jupyter cell) exactly as a request
     * would be counted: against the key's limit and, with a target (a session), the target's. Throws the 429.
     */
    limitAction: (principal: Principal, target?: string) => Promise<void>
  }
}

/** The session or sandbox a request acts on: the :id in its path, or session_id in its body. */
const targetOf = (request: FastifyRequest): string | undefined =>
  (request.params as { id?: string } | undefined)?.id ?? (request.body as { session_id?: string } | undefined)?.session_id

const tooMany = (max: number, ttlMs: number, what: string) => new AppError(429, 'rate_limit_exceeded',
  `Rate limit exceeded: ${max} requests per minute ${what}; retry in ${Math.ceil(ttlMs / 1000)} s`, 'rate_limit_error',
  { retry_after: Math.ceil(ttlMs / 1000) })

/** Per key (per IP before authentication) on every route, and per session or sandbox on the routes that act on one. */
export default fp(async (app) => {
  const { settings } = app
  await app.register(rateLimit, {
    global: true,
    max: async () => settings.get().rate_limit_per_minute,
    timeWindow: 60_000,
    // Counters shared through Redis, reserved a batch at a time (services/rate-limit-store.ts); in memory without Redis.
    ...(app.redis ? { store: leasedStore(app.redis, 'ratelimit:') } : {}),
    keyGenerator: (request: FastifyRequest) => request.principal ? `key:${request.principal.name}` : `ip:${request.ip}`,
    errorResponseBuilder: (request, context) => tooMany(context.max, context.ttl, request.principal ? 'for this API key' : 'for this address')
  })
  // A second limiter on top of the per-key one (app.rateLimit() would be skipped once the global limiter ran).
  const countPerTarget = app.createRateLimit({
    max: async () => settings.get().session_rate_limit_per_minute,
    timeWindow: 60_000,
    keyGenerator: (request: FastifyRequest) => `target:${targetOf(request)}`
  })
  // The same counters as the limiter above: a socket's actions and a client's requests share one budget.
  const countPerKey = app.createRateLimit({
    max: async () => settings.get().rate_limit_per_minute,
    timeWindow: 60_000,
    keyGenerator: (request: FastifyRequest) => `key:${request.principal.name}`
  })
  app.decorate('limitAction', async (principal: Principal, target?: string) => {
    // What the limiter reads of a request: the principal, the target, and the route's (empty) config.
    const request = { principal, params: { id: target }, routeOptions: { config: {} } } as unknown as FastifyRequest
    const perKey = await countPerKey(request)
    if (!perKey.isAllowed && perKey.isExceeded) throw tooMany(perKey.max, perKey.ttl, 'for this API key')
    if (!target) return
    const perTarget = await countPerTarget(request)
    if (!perTarget.isAllowed && perTarget.isExceeded) throw tooMany(perTarget.max, perTarget.ttl, 'for this session')
  })
  app.decorate('limitPerTarget', async (request, reply) => {
    if (!targetOf(request)) return // a request that creates its session has nothing to count against yet
    const limit = await countPerTarget(request)
    if (limit.isAllowed) return
    reply.header('x-ratelimit-limit', limit.max)
    reply.header('x-ratelimit-remaining', limit.remaining)
    reply.header('x-ratelimit-reset', limit.ttlInSeconds)
    if (limit.isExceeded) {
      reply.header('retry-after', limit.ttlInSeconds)
      throw tooMany(limit.max, limit.ttl, 'for this session')
    }
  })
}, { name: 'rate-limit', dependencies: ['config', 'redis', 'auth', 'settings'] })

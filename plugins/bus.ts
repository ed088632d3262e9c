import fp from 'fastify-plugin'
import { Bus } from '../services/bus.js'

declare module 'fastify' {
  interface FastifyInstance { bus: Bus | null }
}

/** Messages between the server processes that share one Redis (null without Redis: one process needs none). */
export default fp(async (app) => {
  if (!app.redis) {
    app.decorate('bus', null)
    return
  }
  // Resubscribed by the bus on every reconnection (ioredis's own resubscribe leaves its failure unhandled when the
  // connection drops again at once: a teardown during a Redis restart did).
  const sub = app.redis.duplicate({ autoResubscribe: false })
  sub.on('error', () => {}) // the shared connection already reports an outage
  // Pub/sub channels span every database of a Redis: the channel names the database, so two deployments told apart
  // only by database number never apply each other's messages.
  const bus = new Bus(app.redis, sub, `${app.config.REDIS_PREFIX}bus:db${app.redis.options.db ?? 0}`, (err) => app.log.warn({ err }, 'a message between server processes failed'))
  await bus.start()
  app.decorate('bus', bus)
  app.addHook('onClose', async () => { await bus.close() })
}, { name: 'bus', dependencies: ['redis'] })

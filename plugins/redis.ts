import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { createRedis, waitReady } from '../services/redis.js'

declare module 'fastify' {
  interface FastifyInstance { redis: Redis | null }
}

/** The shared Redis connection (store, rate-limit counters), or null when REDIS_URL is unset. */
export default fp(async (app) => {
  const { REDIS_URL, REDIS_PREFIX } = app.config
  if (!REDIS_URL) {
    app.decorate('redis', null)
    return
  }
  const redis = createRedis(REDIS_URL, REDIS_PREFIX)
  let down = false
  redis.on('error', (err: Error) => {
    if (!down) app.log.warn({ err: err.message }, 'redis connection error')
    down = true
  })
  redis.on('ready', () => {
    if (down) app.log.info('redis connection restored')
    down = false
  })
  app.decorate('redis', redis)
  app.addHook('onClose', async () => { redis.disconnect() })
  // Commands fail fast while disconnected, so give the first connection a moment before anything starts using it.
  await waitReady(redis, 5000).catch(() => app.log.warn({ url: REDIS_URL.replace(/\/\/[^@]*@/, '//***@') }, 'Redis is not reachable yet: requests get 503 until it is'))
}, { name: 'redis', dependencies: ['config'] })

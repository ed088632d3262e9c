import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { createRedis } from '../services/redis.js'

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
}, { name: 'redis', dependencies: ['config'] })

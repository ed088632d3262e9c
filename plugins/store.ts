import fp from 'fastify-plugin'
import type { Store } from '../services/store/types.js'
import { RedisStore } from '../services/store/redis.js'
import { MemoryStore } from '../services/store/memory.js'
import { SessionService } from '../services/sessions.js'

declare module 'fastify' {
  interface FastifyInstance { store: Store, sessions: SessionService }
}

export default fp(async (app) => {
  const ttl = app.config.SESSION_TTL_S
  const store: Store = app.redis ? new RedisStore(app.redis, ttl, app.config.SESSION_STORED_BYTES) : new MemoryStore(ttl * 1000, app.config.SESSION_STORED_BYTES)
  app.decorate('store', store)
  app.decorate('sessions', new SessionService(store))
  app.addHook('onClose', () => store.close())
}, { name: 'store', dependencies: ['config', 'redis'] })

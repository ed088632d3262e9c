import fp from 'fastify-plugin'
import { LiveSettings } from '../services/settings.js'

declare module 'fastify' {
  interface FastifyInstance { settings: LiveSettings }
}

/** Server-wide defaults from the configuration, changeable by admins at run time (PATCH /v1/settings). */
export default fp(async (app) => {
  const c = app.config
  app.decorate('settings', new LiveSettings({
    default_model: c.DEFAULT_MODEL ?? null,
    auto_run: c.AUTO_RUN,
    execution_timeout_ms: c.EXECUTION_TIMEOUT_MS,
    pool_size: c.POOL_SIZE,
    rate_limit_per_minute: c.RATE_LIMIT_PER_MINUTE,
    session_rate_limit_per_minute: c.SESSION_RATE_LIMIT_PER_MINUTE
  }, c.MAX_EXECUTION_TIMEOUT_MS))
}, { name: 'settings', dependencies: ['config'] })

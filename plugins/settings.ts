import fp from 'fastify-plugin'
import { LiveSettings, SettingsChanges } from '../services/settings.js'

declare module 'fastify' {
  interface FastifyInstance { settings: LiveSettings, settingsChanges: SettingsChanges }
}

/**
 * Server-wide defaults from the configuration, changeable by admins at run time (PATCH /v1/settings); with Redis,
 * a change reaches every server process and outlives restarts.
 */
export default fp(async (app) => {
  const c = app.config
  const settings = new LiveSettings({
    default_model: c.DEFAULT_MODEL ?? null,
    auto_run: c.AUTO_RUN,
    execution_timeout_ms: c.EXECUTION_TIMEOUT_MS,
    pool_size: c.POOL_SIZE,
    rate_limit_per_minute: c.RATE_LIMIT_PER_MINUTE,
    session_rate_limit_per_minute: c.SESSION_RATE_LIMIT_PER_MINUTE
  }, c.MAX_EXECUTION_TIMEOUT_MS)
  const shared = app.redis && app.bus ? { redis: app.redis, bus: app.bus } : null
  const changes = new SettingsChanges(settings, () => app.models, shared, app.log.child({ component: 'settings' }))
  app.decorate('settings', settings)
  app.decorate('settingsChanges', changes)
  // The models are loaded by then, and every consumer listens for changes.
  app.addHook('onReady', async () => { await changes.start() })
}, { name: 'settings', dependencies: ['config', 'bus'] })

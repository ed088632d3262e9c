import fp from 'fastify-plugin'
import { RedisEventLog, MemoryEventLog, type EventLog } from '../services/events.js'
import { RunManager } from '../services/interpreter/runs.js'

declare module 'fastify' {
  interface FastifyInstance { runs: RunManager, events: EventLog }
}

/** The event log (Redis Streams or memory) and the run manager that drives chat turns. */
export default fp(async (app) => {
  const c = app.config
  const events: EventLog = app.redis ? new RedisEventLog(app.redis, 10_000, c.SESSION_TTL_S, c.SESSION_STORED_BYTES) : new MemoryEventLog(c.SESSION_STORED_BYTES, c.SESSION_TTL_S * 1000)
  const runs = new RunManager({
    sessions: app.sessions,
    store: app.store,
    events,
    models: app.models,
    sandboxes: app.sandboxes,
    log: app.log.child({ component: 'interpreter' }),
    bus: app.bus,
    lockTtlMs: c.RUN_LOCK_TTL_MS,
    settings: {
      maxSteps: c.MAX_STEPS,
      outputLimit: c.MODEL_OUTPUT_LIMIT,
      confirmTimeoutMs: c.CONFIRM_TIMEOUT_MS,
      defaultTemperature: c.TEMPERATURE,
      defaultMaxTokens: c.MAX_TOKENS,
      autoRun: c.AUTO_RUN
    }
  })
  app.decorate('events', events)
  app.decorate('runs', runs)
  app.settings.on('change', (s: { auto_run: boolean }) => runs.configure({ autoRun: s.auto_run }))
  app.addHook('preClose', () => runs.close())
}, { name: 'interpreter', dependencies: ['config', 'store', 'bus', 'llm', 'sandboxes', 'settings'] })

import fp from 'fastify-plugin'
import { ModelRegistry } from '../services/llm/registry.js'

declare module 'fastify' {
  interface FastifyInstance { models: ModelRegistry }
}

/** The models from MODELS_FILE, validated at start-up (a bad file stops it) and reloaded on SIGHUP. */
export default fp<{ env?: Record<string, string | undefined> }>(async (app, opts) => {
  const registry = new ModelRegistry(app.config.MODELS_FILE, opts.env ?? process.env, app.config.DEFAULT_MODEL)
  const count = registry.load()
  app.log.info({ models: count, file: app.config.MODELS_FILE, default: registry.defaultName }, 'models loaded')
  app.decorate('models', registry)
  const onHangup = () => {
    try {
      app.log.info({ models: registry.load() }, 'models reloaded (SIGHUP)')
    } catch (err) {
      app.log.error({ err: (err as Error).message }, 'models file invalid; keeping the previous models')
    }
  }
  process.on('SIGHUP', onHangup)
  app.addHook('onClose', async () => { process.off('SIGHUP', onHangup) })
}, { name: 'llm', dependencies: ['config'] })

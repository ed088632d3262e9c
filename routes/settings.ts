import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { requireAdmin } from '../plugins/auth.js'
import { AppError } from '../services/errors.js'

const SettingsSchema = Type.Object({
  default_model: Type.Union([Type.String(), Type.Null()]),
  models: Type.Array(Type.String()),
  auto_run: Type.Boolean(),
  execution_timeout_ms: Type.Integer(),
  pool_size: Type.Integer(),
  rate_limit_per_minute: Type.Integer(),
  session_rate_limit_per_minute: Type.Integer()
})

/** Server-wide settings (admin keys only); PATCH reloads the models file without a restart. */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const view = () => ({
    default_model: app.models.defaultName,
    models: app.models.list().map(m => m.name),
    auto_run: app.config.AUTO_RUN,
    execution_timeout_ms: app.config.EXECUTION_TIMEOUT_MS,
    pool_size: app.config.POOL_SIZE,
    rate_limit_per_minute: app.config.RATE_LIMIT_PER_MINUTE,
    session_rate_limit_per_minute: app.config.SESSION_RATE_LIMIT_PER_MINUTE
  })
  const errors = { 403: ErrorSchema, ...commonErrors }

  app.get('/settings', {
    preHandler: requireAdmin,
    schema: { tags: ['admin'], summary: 'Server-wide settings', response: { 200: SettingsSchema, ...errors } }
  }, async () => view())

  app.patch('/settings', {
    preHandler: requireAdmin,
    schema: { tags: ['admin'], summary: 'Change settings; reload_models re-reads MODELS_FILE', body: Type.Object({ reload_models: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), response: { 200: SettingsSchema, ...errors } }
  }, async (request) => {
    if (request.body.reload_models) {
      try {
        app.models.load()
      } catch (err) {
        throw new AppError(400, 'invalid_models_file', (err as Error).message)
      }
      request.log.info({ models: app.models.list().length }, 'models reloaded')
    }
    return view()
  })
}

export default routes

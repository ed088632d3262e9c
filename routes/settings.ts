import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { requireAdmin } from '../plugins/auth.js'
import { AppError } from '../services/errors.js'
import { SettingsSchema, SettingsPatchSchema } from '../services/settings.js'

const SettingsViewSchema = Type.Intersect([SettingsSchema, Type.Object({ models: Type.Array(Type.String()) })])

/** Server-wide settings (admin keys only), applied without a restart; reload_models re-reads MODELS_FILE. */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const view = () => ({ ...app.settings.get(), default_model: app.models.defaultName, models: app.models.list().map(m => m.name) })
  const errors = { 403: ErrorSchema, ...commonErrors }

  app.get('/settings', {
    preHandler: requireAdmin,
    schema: { tags: ['admin'], summary: 'Server-wide settings', response: { 200: SettingsViewSchema, ...errors } }
  }, async () => view())

  app.patch('/settings', {
    preHandler: requireAdmin,
    schema: {
      tags: ['admin'],
      summary: 'Change settings without a restart; reload_models re-reads the models file',
      body: Type.Intersect([SettingsPatchSchema, Type.Object({ default_model: Type.Optional(Type.String()), reload_models: Type.Optional(Type.Boolean()) })]),
      response: { 200: SettingsViewSchema, ...errors }
    }
  }, async (request) => {
    const { reload_models: reload, default_model: model, ...patch } = request.body
    if (reload) {
      try {
        app.models.load()
      } catch (err) {
        throw new AppError(400, 'invalid_models_file', (err as Error).message)
      }
      request.log.info({ models: app.models.list().length }, 'models reloaded')
    }
    if (model !== undefined) app.models.get(model) // a 400 listing the known models
    app.settings.update(patch)
    if (model !== undefined) app.models.setDefault(model)
    request.log.info({ settings: request.body }, 'settings changed')
    return view()
  })
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { requireAdmin } from '../plugins/auth.js'
import { SettingsSchema, SettingsChangeSchema } from '../services/settings.js'

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
      summary: 'Change settings without a restart, in every server process; reload_models re-reads the models file, reset restores the configuration',
      body: SettingsChangeSchema,
      response: { 200: SettingsViewSchema, ...errors }
    }
  }, async (request) => {
    await app.settingsChanges.change(request.body)
    request.log.info({ settings: request.body }, 'settings changed')
    return view()
  })
}

export default routes

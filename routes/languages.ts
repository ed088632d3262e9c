import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { commonErrors } from '../schemas/common.js'
import { LanguageListSchema, type Language } from '../schemas/sandboxes.js'
import { LANGUAGES } from '../services/sandbox/languages.js'

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/languages', {
    schema: { tags: ['sandboxes'], summary: 'The languages sandboxes run, and which this image has', response: { 200: LanguageListSchema, ...commonErrors } }
  }, async () => {
    const available = new Set(app.sandboxes.languages())
    return {
      object: 'list' as const,
      data: LANGUAGES.map(l => ({ id: l.id as Language, name: l.name, aliases: l.aliases, stateful: l.kernel !== undefined, available: available.has(l) }))
    }
  })
}

export default routes

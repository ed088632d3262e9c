import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema } from '../schemas/common.js'
import { requireAdmin } from '../plugins/auth.js'

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const open = app.config.METRICS_PUBLIC
  app.get('/metrics', {
    config: { public: open },
    ...(open ? {} : { preHandler: requireAdmin }),
    schema: {
      tags: ['admin'],
      summary: open ? 'Prometheus metrics (public: METRICS_PUBLIC=true)' : 'Prometheus metrics (admin key)',
      ...(open ? { security: [] } : {}),
      response: { 200: Type.String({ description: 'Prometheus text format' }), 401: ErrorSchema, 403: ErrorSchema }
    }
  }, async (_request, reply) => {
    reply.type(app.metrics.registry.contentType)
    return await app.metrics.registry.metrics()
  })
}

export default routes

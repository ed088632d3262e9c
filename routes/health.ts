import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'

const HealthSchema = Type.Object({ status: Type.Literal('ok'), version: Type.String(), model: Type.Union([Type.String(), Type.Null()]) })
const ReadySchema = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  checks: Type.Record(Type.String(), Type.String()),
  pool: Type.Optional(Type.Object({ warm: Type.Integer(), creating: Type.Integer(), size: Type.Integer(), live: Type.Integer(), busy: Type.Integer() }))
})

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const publicRoute = { public: true, rateLimit: false } as const

  app.get('/health', {
    config: publicRoute,
    schema: { tags: ['health'], summary: 'Liveness: the process answers', security: [], response: { 200: HealthSchema } }
  }, async () => ({ status: 'ok' as const, version: app.config.version, model: app.config.DEFAULT_MODEL ?? null }))

  app.get('/ready', {
    config: publicRoute,
    schema: { tags: ['health'], summary: 'Readiness: Redis, Docker, the sandbox image and pool', security: [], response: { 200: ReadySchema, 503: ReadySchema } }
  }, async (_request, reply) => {
    const checks: Record<string, string> = {}
    checks.store = await app.store.ping().then(() => 'ok', (err: Error) => `down: ${app.store.kind === 'redis' ? 'redis unreachable' : err.message}`)
    let pool
    if (app.config.SANDBOX_ENABLED) {
      Object.assign(checks, await app.sandboxes.pool.health())
      pool = { ...app.sandboxes.pool.stats, ...app.sandboxes.counts }
    }
    const ready = Object.values(checks).every(v => v === 'ok')
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', checks, ...(pool ? { pool } : {}) })
  })
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { CapacityStatusSchema, HostStatusSchema, PoolStatusSchema, RecoveryStatusSchema } from '../schemas/sandboxes.js'

const HealthSchema = Type.Object({ status: Type.Literal('ok'), version: Type.String(), model: Type.Union([Type.String(), Type.Null()]) })
const ReadySchema = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('unavailable')]),
  checks: Type.Record(Type.String(), Type.String()),
  pool: Type.Optional(PoolStatusSchema),
  capacity: Type.Optional(CapacityStatusSchema),
  recovery: Type.Optional(RecoveryStatusSchema),
  hosts: Type.Optional(Type.Array(HostStatusSchema))
})

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const publicRoute = { public: true, rateLimit: false, accessLog: 'debug' } as const

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
    let sandboxes
    if (app.config.SANDBOX_ENABLED) {
      // Ready while any Docker host answers (with its image): new sandboxes go there.
      const healths = await Promise.all(app.sandboxes.pools.map(p => p.health()))
      Object.assign(checks, healths.find(h => h.docker === 'ok' && h.image === 'ok') ?? healths[0])
      await app.sandboxes.refreshCounts().catch(() => {}) // the store's check above says when it is down
      const hosts = app.sandboxes.hosts
      sandboxes = { pool: { ...app.sandboxes.pool.stats, ...app.sandboxes.counts }, capacity: app.sandboxes.capacity, recovery: app.sandboxes.recovery, hosts }
    }
    // Recovery does not hold readiness back: a sandbox not yet re-adopted is attached on its first request.
    const ready = Object.values(checks).every(v => v === 'ok')
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', checks, ...sandboxes })
  })
}

export default routes

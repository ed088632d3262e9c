import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { CapacityStatusSchema, HostStatusSchema, PoolStatusSchema } from '../schemas/sandboxes.js'
import { requireAdmin } from '../plugins/auth.js'
import { openSse } from './sse.js'
import type { LogLine } from '../services/log-hub.js'

const StatsSchema = Type.Object({
  requests_total: Type.Number(),
  request_seconds_total: Type.Number(),
  executions_total: Type.Number(),
  execution_seconds_total: Type.Number(),
  sessions: Type.Integer({ description: "this key's sessions (every key's for admin keys), up to 1000" }),
  sandboxes: Type.Integer({ description: "this key's sandboxes (every key's for admin keys)" }),
  pool: PoolStatusSchema,
  capacity: CapacityStatusSchema,
  hosts: Type.Array(HostStatusSchema)
})

type MetricJson = { name: string, values: Array<{ value: number, metricName?: string }> }

/** What the web monitor reads: counters from the server's own metrics, and (admins) the live log. */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/stats', {
    schema: { tags: ['admin'], summary: 'Counts and totals for the monitor (clients derive rates from two readings)', response: { 200: StatsSchema, ...commonErrors } }
  }, async (request) => {
    const metrics = await app.metrics.registry.getMetricsAsJSON() as unknown as MetricJson[]
    const sum = (name: string, metricName = name) => metrics.find(m => m.name === name)?.values.filter(v => (v.metricName ?? name) === metricName).reduce((s, v) => s + v.value, 0) ?? 0
    const admin = request.principal.role === 'admin'
    const sessions = await app.sessions.list(request.principal, { limit: 1000, offset: 0 }, admin)
    const all = await app.sandboxes.list(request.principal, true)
    await app.sandboxes.refreshCounts(all) // one listing serves the host counts and the count shown
    const sandboxes = admin ? all : all.filter(r => r.owner === request.principal.name)
    return {
      requests_total: sum('http_requests_total'),
      request_seconds_total: sum('http_request_duration_seconds', 'http_request_duration_seconds_sum'),
      executions_total: sum('sandbox_executions_total'),
      execution_seconds_total: sum('sandbox_execution_duration_seconds', 'sandbox_execution_duration_seconds_sum'),
      sessions: sessions.items.length,
      sandboxes: sandboxes.length,
      pool: { ...app.sandboxes.pool.stats, ...app.sandboxes.counts },
      capacity: app.sandboxes.capacity,
      hosts: app.sandboxes.hosts
    }
  })

  app.get('/admin/logs', {
    preHandler: requireAdmin,
    schema: {
      tags: ['admin'],
      summary: "The server's log lines as SSE: recent ones, then live (admin keys)",
      querystring: Type.Object({ level: Type.Integer({ default: 30, minimum: 10, maximum: 60 }), session: Type.Optional(Type.String({ maxLength: 64 })) }),
      response: { 200: Type.String({ description: 'text/event-stream, one `log` event per line' }), 403: ErrorSchema, ...commonErrors }
    }
  }, async (request, reply) => {
    const { level, session } = request.query
    const wanted = (line: LogLine) => line.level >= level && (!session || JSON.stringify(line).includes(session))
    const sse = openSse(reply)
    // Lines are pushed as they happen: while the client is behind by more than a buffer's worth they are dropped and
    // counted (a `dropped` event says how many), never queued without bound.
    let dropped = 0
    const send = (line: LogLine) => {
      if (!wanted(line)) return
      if (sse.queued > app.config.WS_MAX_BUFFERED_BYTES) { dropped++; return }
      if (dropped) sse.send('dropped', { lines: dropped })
      dropped = 0
      sse.send('log', line)
    }
    for (const line of app.logs.backlog()) send(line)
    const onLine = send
    app.logs.events.on('line', onLine)
    const heartbeat = setInterval(() => sse.comment('ping'), 15_000)
    reply.raw.on('close', () => {
      clearInterval(heartbeat)
      app.logs.events.off('line', onLine)
    })
    return reply
  })
}

export default routes

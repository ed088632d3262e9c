import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { CapacityStatusSchema, HostStatusSchema, PoolStatusSchema } from '../schemas/sandboxes.js'
import { requireAdmin } from '../plugins/auth.js'
import { openSse } from './sse.js'
import { Readable } from 'node:stream'
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

  // --- the operator's monitor: charts, sandboxes with their resources, the audit trail ------------------------------
  const Sample = Type.Object({
    t: Type.Number({ description: 'the start of the 10 s window, ms since the epoch' }),
    requests: Type.Integer(),
    p50_ms: Type.Union([Type.Number(), Type.Null()]),
    p99_ms: Type.Union([Type.Number(), Type.Null()]),
    executions: Type.Record(Type.String(), Type.Integer(), { description: 'by protocol' }),
    live: Type.Integer(),
    warm: Type.Integer(),
    paused: Type.Integer(),
    queued: Type.Integer(),
    starts: Type.Integer(),
    start_ms: Type.Union([Type.Integer(), Type.Null()]),
    memory_used_mb: Type.Integer(),
    memory_budget_mb: Type.Integer(),
    hosts: Type.Record(Type.String(), Type.Integer(), { description: 'live sandboxes per Docker host' })
  })
  app.get('/admin/timeseries', {
    preHandler: requireAdmin,
    schema: {
      tags: ['admin'],
      summary: 'The last hour in 10 s samples, every replica added up: requests and latency, executions by protocol, sandboxes live/warm/paused, the start queue and start time, the memory budget, sandboxes per host (admin keys)',
      querystring: Type.Object({ minutes: Type.Integer({ minimum: 1, maximum: 60, default: 60 }) }),
      response: { 200: Type.Object({ interval_s: Type.Integer(), replicas: Type.Integer(), samples: Type.Array(Sample) }), 403: ErrorSchema, ...commonErrors }
    }
  }, async (request) => ({ interval_s: 10, ...await app.timeseries.series(request.query.minutes) }))

  const LiveSandbox = Type.Object({
    id: Type.String(),
    key: Type.String({ description: 'the key\'s name' }),
    session_id: Type.Union([Type.String(), Type.Null()]),
    language: Type.String(),
    host: Type.String(),
    runtime: Type.String({ description: 'the container runtime (runc, runsc: gVisor)' }),
    state: Type.Union([Type.Literal('ready'), Type.Literal('busy'), Type.Literal('paused')], { description: 'busy: running code now (in this process)' }),
    pause_mode: Type.Optional(Type.Union([Type.Literal('memory'), Type.Literal('files')], { description: 'how a paused one is kept' })),
    created_at: Type.String(),
    last_used_at: Type.String(),
    age_s: Type.Integer(),
    idle_s: Type.Integer(),
    cpu_percent: Type.Union([Type.Number(), Type.Null()], { description: 'of one CPU, over the last poll (null until two readings)' }),
    memory_bytes: Type.Union([Type.Integer(), Type.Null()]),
    memory_limit_mb: Type.Integer(),
    network: Type.String({ description: 'the egress allow list, or none' }),
    source: Type.Union([Type.String(), Type.Null()], { description: 'what made it (metadata.source: mcp, librechat, open-terminal, ...)' })
  })
  app.get('/admin/sandboxes', {
    schema: {
      tags: ['admin'],
      summary: 'Sandboxes with their live CPU and memory (an admin key sees every key\'s; a user key its own): read by one poller per Docker host while someone looks, every 5 s',
      response: { 200: Type.Object({ data: Type.Array(LiveSandbox), pollers: Type.Integer({ description: 'engine pollers running (one per host at most)' }) }), ...commonErrors }
    }
  }, async (request) => {
    const all = await app.sandboxes.list(request.principal, true)
    const mine = request.principal.role === 'admin' ? all : all.filter(r => r.owner === request.principal.name)
    const stats = app.sandboxes.liveStats(mine)
    const now = Date.now()
    const runtime = app.config.SANDBOX_RUNTIME ?? 'runc'
    return {
      pollers: app.sandboxes.statsPollers,
      data: mine.map(r => {
        const live = stats.get(r.id)
        const view = app.sandboxes.view(r)
        return {
          id: r.id,
          key: r.owner,
          session_id: r.session_id,
          language: r.language,
          host: r.host ?? app.sandboxes.hosts[0]?.name ?? 'local',
          runtime,
          state: view.status,
          ...(view.pause_mode ? { pause_mode: view.pause_mode } : {}),
          created_at: r.created_at,
          last_used_at: r.last_used_at,
          age_s: Math.max(0, Math.round((now - Date.parse(r.created_at)) / 1000)),
          idle_s: Math.max(0, Math.round((now - Date.parse(r.last_used_at)) / 1000)),
          cpu_percent: live?.cpu_percent ?? null,
          memory_bytes: live?.memory_bytes ?? null,
          memory_limit_mb: r.memory_mb,
          network: r.network?.join(' ') || 'none',
          source: r.metadata.source ?? null
        }
      })
    }
  })

  const AuditEntry = Type.Object({
    id: Type.String(),
    at: Type.String(),
    key: Type.String({ description: 'the key\'s name (system: the server itself)' }),
    role: Type.String(),
    action: Type.String({ description: 'sandbox.create, sandbox.delete, sandbox.policy, execute, file.upload, file.download, file.delete, session.create, session.delete, settings.change, secret.set, secret.delete, volume.*, snapshot.delete' }),
    target: Type.Union([Type.String(), Type.Null()]),
    ip: Type.Union([Type.String(), Type.Null()]),
    detail: Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()]))
  })
  const AuditQuery = Type.Object({
    key: Type.Optional(Type.String({ maxLength: 100, description: 'a key\'s name (a user key always sees its own only)' })),
    action: Type.Optional(Type.String({ maxLength: 64, description: 'an action, or its family (file, sandbox)' })),
    target: Type.Optional(Type.String({ maxLength: 128 })),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
    before: Type.Optional(Type.String({ maxLength: 32, pattern: '^\\d{1,15}-\\d{1,15}$', description: 'the next of the previous page' }))
  })
  const auditFilter = (request: { principal: { role: string, name: string }, query: { key?: string, action?: string, target?: string, since?: string, until?: string } }) => {
    const q = request.query
    return {
      ...(request.principal.role === 'admin' ? (q.key ? { key: q.key } : {}) : { key: request.principal.name }),
      ...(q.action ? { action: q.action } : {}),
      ...(q.target ? { target: q.target } : {}),
      ...(q.since ? { since: Date.parse(q.since) } : {}),
      ...(q.until ? { until: Date.parse(q.until) } : {})
    }
  }
  app.get('/admin/audit', {
    schema: {
      tags: ['admin'],
      summary: 'The audit trail, newest first: who (a key\'s name) did what to which sandbox or session, when, from where (an admin key sees every key\'s entries; a user key its own)',
      querystring: AuditQuery,
      response: { 200: Type.Object({ data: Type.Array(AuditEntry), next: Type.Union([Type.String(), Type.Null()]) }), ...commonErrors }
    }
  }, async (request) => {
    const { entries, next } = await app.audit.list(auditFilter(request), request.query.limit, request.query.before)
    return { data: entries, next }
  })
  app.get('/admin/audit.jsonl', {
    schema: {
      tags: ['admin'],
      summary: 'The audit trail as JSON lines, oldest first (the same filters, no limit)',
      querystring: Type.Omit(AuditQuery, ['limit', 'before']),
      response: { 200: Type.String({ description: 'application/x-ndjson: one entry per line' }), ...commonErrors }
    }
  }, async (request, reply) => {
    const entries = app.audit.all(auditFilter(request))
    reply.type('application/x-ndjson').header('content-disposition', 'attachment; filename="audit.jsonl"')
    return reply.send(Readable.from((async function * () { for await (const e of entries) yield `${JSON.stringify(e)}\n` })()) as unknown as string)
  })
}

export default routes

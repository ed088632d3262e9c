import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { TimeSeries } from '../services/timeseries.js'

declare module 'fastify' {
  interface FastifyInstance { timeseries: TimeSeries }
}

type MetricJson = { name: string, values: Array<{ value: number, labels: Record<string, string | number>, metricName?: string }> }

/** The monitor's charts: a sample every 10 s of this process's traffic and the sandboxes' state (services/timeseries.ts). */
export default fp(async (app) => {
  const series = new TimeSeries(app.bus?.id ?? randomUUID(), app.redis, () => {
    const cap = app.sandboxes.capacity
    const pool = { ...app.sandboxes.pool.stats, ...app.sandboxes.counts }
    return {
      live: cap.live,
      warm: pool.warm,
      paused: cap.paused,
      queued: pool.queued,
      memory_used_mb: cap.memory_used_mb,
      memory_budget_mb: cap.memory_budget_mb,
      hosts: Object.fromEntries(app.sandboxes.hosts.map(h => [h.name, h.live]))
    }
  }, async () => {
    const metrics = await app.metrics.registry.getMetricsAsJSON() as unknown as MetricJson[]
    const executions: Record<string, number> = {}
    for (const v of metrics.find(m => m.name === 'sandbox_executions_total')?.values ?? []) {
      const protocol = String(v.labels.protocol ?? 'rest')
      executions[protocol] = (executions[protocol] ?? 0) + v.value
    }
    const starts = metrics.find(m => m.name === 'sandbox_start_duration_seconds')?.values ?? []
    const of = (suffix: string) => starts.filter(v => v.metricName === `sandbox_start_duration_seconds_${suffix}`).reduce((s, v) => s + v.value, 0)
    return { executions, starts: { count: of('count'), sum: of('sum') } }
  })
  app.decorate('timeseries', series)
  app.addHook('onResponse', async (_request, reply) => { series.request(reply.elapsedTime) })
  app.addHook('onReady', async () => { series.start() })
  app.addHook('onClose', async () => { series.stop() })
}, { name: 'monitor', dependencies: ['config', 'redis', 'metrics', 'sandboxes'] })

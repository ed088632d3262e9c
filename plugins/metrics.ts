import fp from 'fastify-plugin'
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client'

export interface Metrics {
  registry: Registry
  requests: Counter<'method' | 'route' | 'status'>
  duration: Histogram<'method' | 'route'>
  redisErrors: Counter
  executions: Counter<'language' | 'status' | 'protocol'>
  executionDuration: Histogram<'language'>
  sandboxStarts: Histogram
  sandboxStartFailures: Counter
  capacityRejections: Counter<'reason'>
  pauses: Histogram<'action' | 'mode'>
  pausedBytes: Counter
  processes: Counter<'kind'>
  portBytes: Counter<'direction'>
  portConnections: Counter<'status'>
  egressEvents: Counter<'event'>
  streamsOpen: Gauge<'kind'>
}

declare module 'fastify' {
  interface FastifyInstance { metrics: Metrics }
}

/** Prometheus metrics in a registry of this app's own (tests build several apps in one process). */
export default fp(async (app) => {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const metrics: Metrics = {
    registry,
    requests: new Counter({ name: 'http_requests_total', help: 'HTTP requests by route and status', labelNames: ['method', 'route', 'status'], registers: [registry] }),
    duration: new Histogram({ name: 'http_request_duration_seconds', help: 'HTTP request durations', labelNames: ['method', 'route'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    redisErrors: new Counter({ name: 'redis_errors_total', help: 'Requests that failed because Redis was unavailable', registers: [registry] }),
    executions: new Counter({ name: 'sandbox_executions_total', help: 'Code executions by language, outcome (ok, error: the code raised or timed out, failed: no result) and the protocol that asked', labelNames: ['language', 'status', 'protocol'], registers: [registry] }),
    executionDuration: new Histogram({ name: 'sandbox_execution_duration_seconds', help: 'Code execution durations', labelNames: ['language'], buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    sandboxStarts: new Histogram({ name: 'sandbox_start_duration_seconds', help: 'Container starts, from create to the agent being ready (queue time not included)', buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30], registers: [registry] }),
    sandboxStartFailures: new Counter({ name: 'sandbox_start_failures_total', help: 'Container starts that failed (the container is removed)', registers: [registry] }),
    capacityRejections: new Counter({ name: 'sandbox_capacity_rejections_total', help: 'Sandbox requests refused with 503 capacity_exhausted, by reason', labelNames: ['reason'], registers: [registry] }),
    pauses: new Histogram({ name: 'sandbox_pause_duration_seconds', help: 'Pauses and resumes of sandboxes (action), by how the host keeps them (mode: memory, files)', labelNames: ['action', 'mode'], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], registers: [registry] }),
    pausedBytes: new Counter({ name: 'sandbox_pause_files_bytes_total', help: 'Workspace bytes kept by pauses that keep files (hosts that cannot checkpoint)', registers: [registry] }),
    processes: new Counter({ name: 'sandbox_processes_started_total', help: 'Commands started in sandboxes, by kind (command: to its end; background; terminal)', labelNames: ['kind'], registers: [registry] }),
    portBytes: new Counter({ name: 'sandbox_port_bytes_total', help: 'Bytes proxied to (in) and from (out) ports inside sandboxes', labelNames: ['direction'], registers: [registry] }),
    portConnections: new Counter({ name: 'sandbox_port_connections_total', help: 'Connections to ports inside sandboxes, by outcome (ok, refused: nothing listened)', labelNames: ['status'], registers: [registry] }),
    egressEvents: new Counter({ name: 'sandbox_egress_events_total', help: 'Egress proxy events: requests that had a secret injected (injected), connections or requests refused (refused), package downloads served from the cache (cache_hit) or fetched into it (cache_miss)', labelNames: ['event'], registers: [registry] }),
    streamsOpen: new Gauge({ name: 'sandbox_streams_open', help: 'Open terminal, process-output and watcher streams, by kind', labelNames: ['kind'], registers: [registry] })
  }
  app.decorate('metrics', metrics)
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched'
    metrics.requests.inc({ method: request.method, route, status: String(reply.statusCode) })
    metrics.duration.observe({ method: request.method, route }, reply.elapsedTime / 1000)
  })
}, { name: 'metrics' })

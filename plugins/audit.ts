import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { AuditTrail } from '../services/audit.js'

declare module 'fastify' {
  interface FastifyInstance { audit: AuditTrail }
}

/**
 * What a route does, for the audit trail, by method and route pattern: the changes and transfers worth a line that
 * the services do not record themselves (sandboxes made, removed and re-policied, and executions, are recorded where
 * they happen, whichever protocol asked). The target is the sandbox, session or name the route names.
 */
const ROUTES: Record<string, { action: string, detail?: (request: FastifyRequest) => Record<string, unknown> }> = {
  'PUT /v1/sandboxes/:id/files/*': { action: 'file.upload', detail: r => ({ path: (r.params as Record<string, string>)['*'] }) },
  'GET /v1/sandboxes/:id/files/*': { action: 'file.download', detail: r => ({ path: (r.params as Record<string, string>)['*'] }) },
  'DELETE /v1/sandboxes/:id/files/*': { action: 'file.delete', detail: r => ({ path: (r.params as Record<string, string>)['*'] }) },
  'GET /v1/sandboxes/:id/archive': { action: 'file.download', detail: () => ({ path: '(workspace archive)' }) },
  'PUT /v1/sandboxes/:id/archive': { action: 'file.upload', detail: () => ({ path: '(workspace archive)' }) },
  'POST /v1/sessions': { action: 'session.create' },
  'DELETE /v1/sessions/:id': { action: 'session.delete' },
  'PATCH /v1/settings': { action: 'settings.change', detail: r => ({ fields: Object.keys((r.body ?? {}) as object).join(' ') }) },
  'POST /v1/secrets': { action: 'secret.set', detail: r => ({ name: (r.body as { name?: string } | undefined)?.name }) },
  'PUT /v1/secrets/:name': { action: 'secret.set' },
  'DELETE /v1/secrets/:name': { action: 'secret.delete' },
  'POST /v1/volumes': { action: 'volume.create' },
  'DELETE /v1/volumes/:name': { action: 'volume.delete' },
  'DELETE /v1/snapshots/:name': { action: 'snapshot.delete' },
  'POST /terminal/files/upload': { action: 'file.upload', detail: r => ({ path: (r.query as Record<string, string>).directory, via: 'terminal' }) },
  'GET /terminal/files/view': { action: 'file.download', detail: r => ({ path: (r.query as Record<string, string>).path, via: 'terminal' }) },
  'POST /librechat/v1/upload': { action: 'file.upload', detail: () => ({ via: 'librechat' }) },
  'GET /librechat/v1/download/:session_id/:file_id': { action: 'file.download', detail: () => ({ via: 'librechat' }) }
}

/** The audit trail, and each request's caller (key name, address) carried to whatever it records. */
export default fp(async (app) => {
  const c = app.config
  const audit = new AuditTrail(app.redis, { maxEntries: c.AUDIT_MAX_ENTRIES, retentionS: c.AUDIT_RETENTION_S, log: app.log })
  app.decorate('audit', audit)
  app.addHook('onRequest', (request, _reply, done) => {
    const principal = request.principal as { name: string, role: string } | null
    audit.as({ key: principal?.name ?? 'anonymous', role: principal?.role ?? 'none', ip: request.ip }, done)
  })
  app.addHook('onResponse', async (request, reply) => {
    if (reply.statusCode >= 400 || !request.principal) return
    const route = ROUTES[`${request.method} ${request.routeOptions.url ?? ''}`]
    if (!route) return
    const params = request.params as Record<string, string> | undefined
    const target = params?.id ?? params?.session_id ?? params?.name ?? null
    audit.record(route.action, target, route.detail?.(request) ?? {})
  })
}, { name: 'audit', dependencies: ['config', 'redis', 'auth'] })

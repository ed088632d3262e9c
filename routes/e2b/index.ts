import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { E2bControl } from '../../services/e2b/control.js'
import sandboxRoutes from './sandbox.js'
import { AppError } from '../../services/errors.js'
import { clientGone, protocolErrors } from '../../plugins/route-kit.js'

/** E2B's error body: the HTTP status again, and a message (the SDK shows `<code>: <message>`). */
const ErrorBody = Type.Object({ code: Type.Integer(), message: Type.String() }, { description: "E2B's error shape" })
const Id = Type.Object({ sandboxID: Type.String({ minLength: 1, maxLength: 128 }) })
const Metadata = Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 1024 }))
const StrMap = Type.Record(Type.String(), Type.String())
const Network = Type.Object({
  allowOut: Type.Optional(Type.Array(Type.String({ maxLength: 260 }), { maxItems: 100 })),
  denyOut: Type.Optional(Type.Array(Type.String({ maxLength: 260 }), { maxItems: 100 }))
})
// What current SDKs send (they add fields over time: extra properties are accepted, and refused by name when they ask
// for something this server does not do).
const NewSandbox = Type.Object({
  templateID: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  timeout: Type.Optional(Type.Integer({ minimum: 1 })),
  metadata: Type.Optional(Metadata),
  envVars: Type.Optional(StrMap),
  autoPause: Type.Optional(Type.Boolean()),
  autoPauseMemory: Type.Optional(Type.Boolean()),
  allow_internet_access: Type.Optional(Type.Boolean()),
  network: Type.Optional(Network),
  secure: Type.Optional(Type.Boolean())
})
const Created = Type.Object({
  sandboxID: Type.String(),
  templateID: Type.String(),
  clientID: Type.String(),
  envdVersion: Type.String(),
  envdAccessToken: Type.String({ description: 'opens this sandbox\'s data plane (X-Access-Token)' }),
  trafficAccessToken: Type.String({ description: 'the same token, which the code-interpreter SDK and port URLs send as E2B-Traffic-Access-Token' }),
  domain: Type.Union([Type.String(), Type.Null()])
})
const Listed = Type.Object({
  sandboxID: Type.String(),
  templateID: Type.String(),
  clientID: Type.String(),
  startedAt: Type.String(),
  endAt: Type.String({ description: 'when it goes if left idle (our timeouts count from the last use)' }),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  metadata: Metadata,
  state: Type.Union([Type.Literal('running'), Type.Literal('paused')]),
  envdVersion: Type.String(),
  volumeMounts: Type.Array(Type.Object({ name: Type.String(), path: Type.String() })),
  domain: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  allowInternetAccess: Type.Optional(Type.Boolean()),
  network: Type.Optional(Network),
  lifecycle: Type.Optional(Type.Object({ onTimeout: Type.String(), autoResume: Type.Boolean() }))
})
const Timeout = Type.Object({ timeout: Type.Integer({ minimum: 1, description: 'seconds' }) })

/**
 * E2B's control plane (E2B_API_URL=http://host:8000/e2b): sandboxes created, listed, paused and killed with an
 * X-API-KEY that is one of our keys. Their data plane is routes/e2b/sandbox.ts.
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const control = new E2bControl(app.sandboxes, app.workspace, { domain: app.config.PORT_HOST_DOMAIN || null })
  // The data plane (E2B_SANDBOX_URL) under /e2b/sandbox, with the same control (its tokens and ids).
  await app.register(sandboxRoutes, { prefix: '/sandbox', control })
  const tags = ['e2b']
  const config = { apiKeyHeader: true }
  const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 410: ErrorBody, 413: ErrorBody, 415: ErrorBody, 429: ErrorBody, 503: ErrorBody }
  app.setErrorHandler(protocolErrors(e => ({ code: e.statusCode, message: e.message })))
  // E2B's clients send Content-Type: application/json on bodiless calls too (DELETE, pause): an empty body is no body.
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: 1024 * 1024 }, (_request, body, done) => {
    if (body === '') return done(null, undefined)
    try {
      done(null, JSON.parse(body as string))
    } catch {
      done(new AppError(400, 'invalid_json', 'The body is not JSON'), undefined)
    }
  })
  const unsupported = (what: string) => new AppError(501, 'unsupported', `${what} is not offered by this server (see the README's "Use with E2B's SDKs")`)

  const create = async (request: FastifyRequest<{ Body: Record<string, unknown> }>, reply: FastifyReply) =>
    reply.status(201).send(await control.create(request.principal, request.body, clientGone(reply)))
  for (const url of ['/v2/sandboxes', '/sandboxes']) {
    app.post(url, { config, schema: { tags, summary: 'Create a sandbox (E2B: Sandbox.create)', body: NewSandbox, response: { 201: Created, ...errors } } }, create)
  }

  app.get('/v2/sandboxes', {
    config,
    schema: {
      tags,
      summary: 'List sandboxes (E2B: Sandbox.list); the next page\'s token is in the x-next-token header',
      querystring: Type.Object({
        metadata: Type.Optional(Type.String({ maxLength: 8192, description: 'URL-encoded key=value pairs, all of which must match' })),
        state: Type.Optional(Type.String({ maxLength: 64, description: 'running,paused' })),
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
        nextToken: Type.Optional(Type.String({ maxLength: 64 }))
      }, { additionalProperties: true }),
      response: { 200: Type.Array(Listed), ...errors }
    }
  }, async (request, reply) => {
    const q = request.query
    const metadata = q.metadata ? Object.fromEntries([...new URLSearchParams(q.metadata)].map(([k, v]) => [safeDecode(k), safeDecode(v)])) : undefined
    const page = await control.list(request.principal, {
      ...(metadata ? { metadata } : {}),
      ...(q.state ? { state: q.state.split(',').filter(Boolean) } : {}),
      ...(q.limit ? { limit: q.limit } : {}),
      ...(q.nextToken ? { nextToken: q.nextToken } : {})
    })
    if (page.nextToken) reply.header('x-next-token', page.nextToken)
    return page.items
  })

  app.get('/sandboxes', { config, schema: { tags, summary: 'List running sandboxes (E2B\'s first list)', response: { 200: Type.Array(Listed), ...errors } } }, async (request) =>
    (await control.list(request.principal, { state: ['running'] })).items)

  app.get('/sandboxes/:sandboxID', { config, schema: { tags, summary: 'A sandbox (E2B: Sandbox.getInfo)', params: Id, response: { 200: Listed, ...errors } } }, async (request) =>
    control.info(await control.record(request.principal, request.params.sandboxID)))

  app.delete('/sandboxes/:sandboxID', { config, schema: { tags, summary: 'Kill a sandbox', params: Id, response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    await control.kill(await control.record(request.principal, request.params.sandboxID))
    return reply.status(204).send(null)
  })

  app.post('/sandboxes/:sandboxID/timeout', { config, schema: { tags, summary: 'Set the timeout (seconds, from now)', params: Id, body: Timeout, response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    await control.setTimeout(await control.record(request.principal, request.params.sandboxID), request.body.timeout)
    return reply.status(204).send(null)
  })

  app.post('/sandboxes/:sandboxID/pause', { config, schema: { tags, summary: 'Pause a sandbox (409 when it is paused already)', params: Id, body: Type.Optional(Type.Object({ memory: Type.Optional(Type.Boolean()) })), response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    if (!await control.pause(await control.record(request.principal, request.params.sandboxID))) throw new AppError(409, 'already_paused', `Sandbox ${request.params.sandboxID} is paused already`)
    return reply.status(204).send(null)
  })

  const connect = async (request: FastifyRequest<{ Params: { sandboxID: string }, Body: { timeout?: number } | undefined }>, reply: FastifyReply) => {
    const { created, resumed } = await control.connect(await control.record(request.principal, request.params.sandboxID), request.body?.timeout)
    return reply.status(resumed ? 201 : 200).send(created)
  }
  const ConnectBody = Type.Optional(Type.Object({ timeout: Type.Optional(Type.Integer({ minimum: 1 })), memory: Type.Optional(Type.Boolean()) }))
  app.post('/v2/sandboxes/:sandboxID/connect', { config, schema: { tags, summary: 'Connect to a sandbox, resuming it when paused (E2B: Sandbox.connect)', params: Id, body: ConnectBody, response: { 200: Created, 201: Created, ...errors } } }, connect)
  app.post('/sandboxes/:sandboxID/resume', { config, schema: { tags, summary: 'Resume a paused sandbox (E2B\'s first resume)', params: Id, body: ConnectBody, response: { 200: Created, 201: Created, ...errors } } }, connect)

  for (const [method, url, what] of [
    ['GET', '/sandboxes/:sandboxID/metrics', 'Sandbox metrics (getMetrics)'],
    ['GET', '/sandboxes/:sandboxID/logs', 'Sandbox logs'],
    ['PUT', '/sandboxes/:sandboxID/network', 'Changing a running sandbox\'s network (updateNetwork): its egress policy is set at creation'],
    ['POST', '/sandboxes/:sandboxID/fork', 'Forking through E2B\'s API (use POST /v1/sandboxes/{id}/fork)'],
    ['POST', '/sandboxes/:sandboxID/snapshots', 'Snapshots through E2B\'s API (use POST /v1/snapshots)'],
    ['GET', '/snapshots', 'Listing snapshots through E2B\'s API (use GET /v1/snapshots)']
  ] as const) {
    app.route({ method, url, config, schema: { tags, summary: `Not offered: ${what}`, response: { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 415: ErrorBody, 501: ErrorBody } }, handler: async () => { throw unsupported(what) } })
  }
  // Any other path of E2B's API (templates, volumes, secrets, ...): its error shape, after the key is checked as E2B's is.
  app.all('/*', { config, schema: { hide: true } }, async (request, reply) => {
    const path = request.url.split('?')[0]!.replace(/^\/e2b/, '')
    return reply.status(404).send({ code: 404, message: `${request.method} ${path}: this part of E2B's API is not offered by this server (see the README's "Use with E2B's SDKs")` })
  })
}

function safeDecode (s: string): string {
  try { return decodeURIComponent(s) } catch { return s }
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions, type ClientRequest } from 'node:http'
import type { Socket } from 'node:net'
import type { Readable } from 'node:stream'
import { WebSocket, type RawData } from 'ws'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { PortParamsSchema, PortUrlBodySchema, PortUrlSchema } from '../schemas/workspace.js'
import type { SandboxRecord } from '../schemas/sandboxes.js'
import { AppError } from '../services/errors.js'
import { WS_PROTOCOL } from '../plugins/websocket.js'
import { heartbeat } from '../plugins/route-kit.js'
import { PortAgent, Workspace } from '../services/sandbox/workspace.js'

// Not passed on: hop-by-hop headers, and this server's own credentials (the sandbox never sees an API key).
const DROP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host',
  'authorization', 'x-api-key', 'proxy-authorization', 'x-access-token', 'e2b-traffic-access-token', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions',
  'sec-websocket-protocol', 'sec-websocket-accept'])

/** The cookie a host-routed app's browser holds its signed token in (never passed on to the app). */
const HOST_COOKIE = '__isp_port'

function forwardHeaders (headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !DROP.has(name)) out[name] = value
  }
  if (typeof out.cookie === 'string') {
    const kept = out.cookie.split(';').map(c => c.trim()).filter(c => c && !c.startsWith(`${HOST_COOKIE}=`)).join('; ')
    if (kept) out.cookie = kept
    else delete out.cookie
  }
  return out
}

/** The part of the URL after the port's prefix, with the query: what the app inside sees. */
function innerPath (url: string, prefix: string): string {
  const rest = url.slice(prefix.length)
  return rest.startsWith('/') ? rest : `/${rest}`
}

/** Where a proxied request goes: `prefix` is cut from the URL; the app is told `forwarded` (default: the prefix) as its root. */
interface Target { sandbox: SandboxRecord, port: number, prefix: string, forwarded?: string }

/**
 * Proxies HTTP (streamed both ways) and WebSocket connections to a port inside a sandbox, through the agent's relay
 * (services/sandbox/workspace.ts connectPort): the sandbox keeps network `none`.
 */
function proxy (app: App) {
  const { workspace } = app
  const refused = (err: unknown) => app.metrics.portConnections.inc({ status: err instanceof AppError && err.code === 'port_closed' ? 'refused' : 'failed' })

  /** A connection to the port, counted (for a WebSocket, made before the upgrade is accepted). */
  const open = async (target: Target): Promise<Socket> => {
    const socket = await workspace.connectPort(target.sandbox, target.port).catch((err: unknown) => { refused(err); throw err })
    app.metrics.portConnections.inc({ status: 'ok' })
    return socket
  }

  // Connections to apps are kept between requests (PortAgent): a new one is opened, and counted, only when none is free.
  const pool = new PortAgent(async (sandbox, port) => await open({ sandbox, port, prefix: '' }))
  app.addHook('onClose', async () => { pool.destroy() })

  const http = async (target: Target, request: FastifyRequest, reply: FastifyReply) => {
    const headers = forwardHeaders(request.headers)
    headers.host = `localhost:${target.port}`
    if (target.forwarded ?? target.prefix) headers['x-forwarded-prefix'] = target.forwarded ?? target.prefix
    headers['x-forwarded-proto'] = request.protocol
    headers['x-forwarded-for'] = request.ip
    const body = request.body as Readable | undefined
    const streamed = Boolean(body && typeof body.pipe === 'function' && request.method !== 'GET' && request.method !== 'HEAD')
    let current: ClientRequest | null = null // the request in flight (a retry replaces it), stopped if the client goes
    const send = (retried: boolean) => {
      const upstream = current = httpRequest({ agent: pool, host: target.sandbox.id, port: target.port, sandbox: target.sandbox, method: request.method, path: innerPath(request.url, target.prefix), headers } as RequestOptions)
      const answered = new Promise<IncomingMessage>((resolve, reject) => {
        upstream.once('response', resolve)
        upstream.once('error', (err: Error) => {
          // A kept connection the app had just closed: once more on a new one, when the request has no body to replay.
          if (upstream.reusedSocket && !retried && !streamed && (err as NodeJS.ErrnoException).code === 'ECONNRESET') return resolve(send(true).answered)
          reject(err instanceof AppError ? err : new AppError(502, 'port_error', `The app on port ${target.port} broke the connection: ${err.message}`, 'sandbox_error'))
        })
      })
      if (streamed) body!.pipe(upstream)
      else upstream.end()
      return { upstream, answered }
    }
    const { answered } = send(false)
    reply.raw.once('close', () => { if (!reply.raw.writableFinished) current?.destroy() })
    const res = await answered
    reply.status(res.statusCode ?? 502)
    for (const [name, value] of Object.entries(res.headers)) {
      if (value !== undefined && !DROP.has(name) && name !== 'content-length') reply.header(name, value)
    }
    if (res.headers['content-length'] !== undefined) reply.header('content-length', res.headers['content-length'])
    return reply.send(res)
  }

  /**
   * Before a WebSocket upgrade is accepted: the app's own handshake, with the subprotocols the client offered (our
   * `bearer.<key>` and `interpreter.v1` left out), so that the client is answered with the one the app chose (Vite's
   * HMR, GraphQL, Jupyter need theirs), or refused with 502 when the app refuses.
   */
  const handshake = async (target: Target, request: FastifyRequest): Promise<WebSocket> => {
    const socket = await open(target)
    const headers = forwardHeaders(request.headers)
    delete headers.cookie
    const protocols = String(request.headers['sec-websocket-protocol'] ?? '').split(',').map(p => p.trim())
      .filter(p => p && !p.startsWith('bearer.') && p !== WS_PROTOCOL)
    const inner = new WebSocket(`ws://localhost:${target.port}${innerPath(request.url, target.prefix)}`, protocols, {
      createConnection: () => socket,
      headers: { ...headers, ...((target.forwarded ?? target.prefix) ? { 'x-forwarded-prefix': target.forwarded ?? target.prefix } : {}) },
      handshakeTimeout: 10_000
    } as ConstructorParameters<typeof WebSocket>[2])
    await new Promise<void>((resolve, reject) => {
      inner.once('open', () => resolve())
      inner.once('unexpected-response', (_req, res) => {
        socket.destroy()
        reject(new AppError(502, 'port_error', `The app on port ${target.port} answered the WebSocket upgrade with ${res.statusCode ?? 'nothing'}`, 'sandbox_error'))
      })
      inner.once('error', (err: Error) => reject(new AppError(502, 'port_error', `The app on port ${target.port} broke the WebSocket upgrade: ${err.message}`, 'sandbox_error')))
    })
    inner.pause() // until the client's side is accepted
    app.sockets.decide(request.raw, inner.protocol || false)
    return inner
  }

  /** Joins an accepted client to the app's socket: messages both ways, closes passed on. */
  const ws = (inner: WebSocket, client: WebSocket) => {
    client.on('message', (data: RawData, isBinary: boolean) => { if (inner.readyState === inner.OPEN) inner.send(data, { binary: isBinary }) })
    inner.on('message', (data: RawData, isBinary: boolean) => { if (client.readyState === client.OPEN) client.send(data, { binary: isBinary }) })
    const code = (c: number) => (c === 1005 || c === 1006 || c === 1015 ? 1000 : c)
    inner.on('close', (c: number, reason: Buffer) => client.close(code(c), reason.toString()))
    inner.on('error', (err: Error) => { if (client.readyState === client.OPEN) client.close(1011, `upstream: ${err.message}`.slice(0, 120)) })
    client.on('close', (c: number, reason: Buffer) => {
      if (inner.readyState === inner.OPEN) inner.close(code(c), reason.toString())
      else inner.terminate()
    })
    client.on('error', () => inner.terminate())
    inner.resume()
  }
  return { http, ws, handshake }
}

/** A port's root without its slash: redirected to it, so that the app's relative links resolve under the prefix. */
const slash = (request: FastifyRequest, reply: FastifyReply) => {
  const [path, query] = request.url.split(/\?(.*)/s)
  return reply.redirect(`${path}/${query ? `?${query}` : ''}`)
}

type App = Parameters<FastifyPluginAsyncTypebox>[0]

type Proxy = ReturnType<typeof proxy>

/** One proxy (and so one pool of kept relays) per server, whichever way in (key, signed URL, host name) a request took. */
const proxies = new WeakMap<object, Proxy>()
function proxyOf (app: App): Proxy {
  let via = proxies.get(app.workspace)
  if (!via) proxies.set(app.workspace, via = proxy(app))
  return via
}

/**
 * Proxies one HTTP request to a port of a sandbox (E2B's single-URL data plane sends app traffic this way, naming
 * the port in a header); `prefix` is cut from the URL.
 */
export async function proxyToPort (app: App, target: { sandbox: SandboxRecord, port: number, prefix: string }, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  return await proxyOf(app).http({ ...target, forwarded: '' }, request, reply)
}

/**
 * One proxy URL for every method: GET (which a WebSocket upgrade also takes) and the others. An upgrade connects to the
 * port before it is accepted (preHandler), so that a closed port, a bad token or another key's sandbox refuse it with
 * the HTTP error a plain request gets.
 */
function declare (app: App, url: string, schema: object, config: object, resolve: (request: FastifyRequest) => Promise<Target>, via: Proxy) {
  const opened = new WeakMap<FastifyRequest, WebSocket>()
  const preHandler = async (request: FastifyRequest) => {
    if (!request.ws) return
    const target = await resolve(request)
    // A signed URL carries no key: its sockets count against the sandbox owner's share, as a key's own do.
    request.principal ??= { name: target.sandbox.owner, role: 'user' }
    await app.sockets.check(request)
    const inner = await via.handshake(target, request)
    opened.set(request, inner)
    setTimeout(() => { if (opened.delete(request)) inner.terminate() }, 10_000).unref() // an upgrade that never completed
  }
  const wsHandler = (client: WebSocket, request: FastifyRequest) => {
    const inner = opened.get(request)
    opened.delete(request)
    if (!inner) return client.close(1011, 'port_unreachable')
    app.sockets.hold(request.principal, client)
    heartbeat(client, app.config.WS_PING_INTERVAL_MS) // a client gone without a close is dropped, and its relay with it
    via.ws(inner, client)
  }
  const handler = async (request: FastifyRequest, reply: FastifyReply) => {
    if (!url.endsWith('*')) return slash(request, reply)
    return await via.http(await resolve(request), request, reply)
  }
  app.route({ method: 'GET', url, schema, config, preHandler, wsHandler, handler })
  app.route({ method: ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'], url, schema: { ...schema, hide: true }, config, handler })
}

const anyBody = (app: App) => {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
}

/** /v1/sandboxes/:id/ports/:port/...: a port, reached with an API key; and signed URLs for it. */
export const sandboxPortRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, workspace } = app
  const tags = ['ports']
  const via = proxyOf(app)

  app.post('/:id/ports/:port/url', {
    schema: { tags, summary: 'A URL for a port that works without an API key (a browser can open it) until it expires', params: PortParamsSchema, body: PortUrlBodySchema, response: { 200: PortUrlSchema, 404: ErrorSchema, ...commonErrors } }
  }, async (request) => {
    const sandbox = await sandboxes.get(request.params.id, request.principal)
    const { token, expires_at: expires } = await workspace.signPort(sandbox, request.params.port, (request.body ?? {}).expires_in ?? 3600)
    const path = `/v1/ports/${token}/`
    const domain = app.config.PORT_HOST_DOMAIN
    const hostUrl = domain ? { host_url: `${request.protocol}://${Workspace.hostLabel(sandbox.id, request.params.port)}.${domain}/?${TOKEN_PARAM}=${token}` } : {}
    return { url: `${request.protocol}://${request.host}${path}`, path, expires_at: expires, ...hostUrl }
  })

  const target = async (request: FastifyRequest<{ Params: { id: string, port: number } }>): Promise<Target> => ({
    sandbox: await sandboxes.get(request.params.id, request.principal),
    port: request.params.port,
    prefix: `/v1/sandboxes/${request.params.id}/ports/${request.params.port}`
  })
  const schema = {
    tags,
    summary: 'Proxy to a port inside the sandbox: HTTP (streamed, any method) and WebSocket; 502 port_closed when nothing listens there',
    params: Type.Object({ id: PortParamsSchema.properties.id, port: PortParamsSchema.properties.port, '*': Type.Optional(Type.String()) }),
    response: { 404: ErrorSchema, 502: ErrorSchema, ...commonErrors }
  }
  // The proxied routes take any body as a stream; the URL route above keeps the JSON parser (another context).
  await app.register(async (proxied) => {
    anyBody(proxied)
    for (const url of ['/:id/ports/:port', '/:id/ports/:port/*']) {
      declare(proxied, url, schema, {}, async (request) => await target(request as FastifyRequest<{ Params: { id: string, port: number } }>), via)
    }
  })
}

/** /v1/ports/:token/...: a port reached with a signed URL (no API key), until the URL expires. */
export const signedPortRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, workspace } = app
  const via = proxyOf(app)
  anyBody(app)
  const target = async (token: string): Promise<Target> => {
    const claims = await workspace.verifyPort(token)
    return { sandbox: await sandboxes.get(claims.sandbox, Workspace.principalOf(claims)), port: claims.port, prefix: `/v1/ports/${token}` }
  }
  const schema = {
    tags: ['ports'],
    summary: 'Proxy to a sandbox port through a signed URL (POST /v1/sandboxes/:id/ports/:port/url): no API key; 401 when the URL is expired or tampered with',
    params: Type.Object({ token: Type.String({ minLength: 1, maxLength: 2048 }), '*': Type.Optional(Type.String()) }),
    response: { 400: ErrorSchema, 401: ErrorSchema, 404: ErrorSchema, 502: ErrorSchema, 429: ErrorSchema, 503: ErrorSchema }
  }
  for (const url of ['/:token', '/:token/*']) {
    declare(app, url, schema, { public: true }, async (request) => await target((request.params as { token: string }).token), via)
  }
}

const TOKEN_PARAM = '_port_token'
const HOST_ROOT = '/v1/port-hosts'

/**
 * With PORT_HOST_DOMAIN: a request to `<port>-<alias>.<domain>` goes to the app at its root (Fastify's rewriteUrl, before
 * routing): its URL becomes /v1/port-hosts/<label><url>, served by hostPortRoutes. Other hosts are left alone.
 */
export function portHostUrl (req: { headers: IncomingHttpHeaders, url?: string }, domain: string): string | undefined {
  const host = String(req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '')
  if (!host.endsWith(`.${domain}`)) return undefined
  const label = host.slice(0, -(domain.length + 1))
  if (!Workspace.parseHostLabel(label)) return undefined
  return `${HOST_ROOT}/${label}${req.url ?? '/'}`
}

/**
 * /v1/port-hosts/<label>/...: a port at the root of a host name of its own (reached through portHostUrl). Access by
 * API key, or by a signed URL's token: given once as `?_port_token=` it is kept in a cookie of that host (HttpOnly,
 * SameSite=Lax, until the token expires) and the browser is sent to the same URL without it.
 */
export const hostPortRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, workspace } = app
  const via = proxyOf(app)
  anyBody(app)
  const tokenOf = (request: FastifyRequest): string | undefined => {
    const query = (request.query as Record<string, unknown>)[TOKEN_PARAM]
    if (typeof query === 'string') return query
    const cookie = String(request.headers.cookie ?? '').split(';').map(c => c.trim()).find(c => c.startsWith(`${HOST_COOKIE}=`))
    return cookie?.slice(HOST_COOKIE.length + 1)
  }
  const resolve = async (request: FastifyRequest): Promise<Target> => {
    const { label } = request.params as { label: string }
    const named = Workspace.parseHostLabel(label)
    // Only through a host name of the domain (portHostUrl rewrote the URL): never as a path of the API's own host.
    if (!named || request.originalUrl === request.url) throw new AppError(404, 'sandbox_not_found', 'Sandbox not found', 'sandbox_error')
    let principal = request.principal
    const access = request.headers['e2b-traffic-access-token']
    if (!principal && typeof access === 'string') {
      // A sandbox's access token (what E2B's SDKs hold: sandbox.trafficAccessToken) opens its own ports.
      const record = await sandboxes.get(named.sandbox, { name: 'port-host', role: 'admin' }).catch(() => null)
      if (!record || !await workspace.isAccessToken(record, access)) throw new AppError(401, 'invalid_access_token', 'The sandbox access token is not this sandbox\'s', 'authentication_error')
      principal = request.principal = { name: record.owner, role: 'user' }
    }
    if (!principal) {
      const token = tokenOf(request)
      if (!token) throw new AppError(401, 'invalid_port_token', 'This app needs an API key or a signed URL (POST /v1/sandboxes/:id/ports/:port/url)', 'authentication_error')
      const claims = await workspace.verifyPort(token)
      if (claims.sandbox !== named.sandbox || claims.port !== named.port) throw new AppError(401, 'invalid_port_token', 'This port URL is not valid: it was signed for another sandbox or port', 'authentication_error')
      principal = Workspace.principalOf(claims)
      request.principal = principal
    }
    return { sandbox: await sandboxes.get(named.sandbox, principal), port: named.port, prefix: `${HOST_ROOT}/${label}`, forwarded: '' }
  }
  // The first visit with a token: kept in the host's cookie, and the browser sent on without it in its address bar.
  app.addHook('preHandler', async (request, reply) => {
    const token = (request.query as Record<string, unknown>)[TOKEN_PARAM]
    if (typeof token !== 'string' || request.ws || request.method !== 'GET') return
    await resolve(request)
    const claims = await workspace.verifyPort(token)
    const url = new URL(request.originalUrl, 'http://x')
    url.searchParams.delete(TOKEN_PARAM)
    const secure = request.protocol === 'https' ? '; Secure' : ''
    reply.header('set-cookie', `${HOST_COOKIE}=${token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${Math.max(0, claims.expires - Math.floor(Date.now() / 1000))}${secure}`)
    return reply.redirect(`${url.pathname}${url.search}`)
  })
  const schema = {
    hide: true,
    params: Type.Object({ label: Type.String({ minLength: 1, maxLength: 63 }), '*': Type.Optional(Type.String()) }),
    response: { 400: ErrorSchema, 401: ErrorSchema, 404: ErrorSchema, 502: ErrorSchema, 429: ErrorSchema, 503: ErrorSchema }
  }
  for (const url of ['/:label', '/:label/*']) declare(app, url, schema, { public: true }, resolve, via)
}

import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js'
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { createMcpHandler, isLegacyRequest } from '@modelcontextprotocol/server'
import { Readable } from 'node:stream'
import type { ReadableStream as WebReadableStream } from 'node:stream/web'
import { mcpServer } from '../../services/mcp/tools.js'
import { Workspaces, modernServer } from '../../services/mcp/modern.js'
import type { Principal } from '../../services/auth.js'
import { RunTasks } from '../../services/mcp/tasks.js'

interface McpSession { transport: StreamableHTTPServerTransport, server: McpServer, owner: string, lastUsed: number }

/** An initialize that can open a session: a JSON-RPC 2.0 request with an id (a notification gets no answer, so no session id). */
const opensSession = (body: unknown): boolean => {
  const b = body as { jsonrpc?: unknown, id?: unknown } | null
  return isInitializeRequest(body) && b?.jsonrpc === '2.0' && (typeof b.id === 'string' || (typeof b.id === 'number' && Number.isFinite(b.id)))
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

/**
 * What is wrong with a request's params, for the JSON-RPC -32602 the client should get (the SDK would answer a
 * malformed tools/call with -32603 and a validator dump); null when they are fine or it is not a request.
 */
function invalidParams (body: unknown): string | null {
  if (!isObject(body) || typeof body.method !== 'string' || body.id === undefined) return null
  if (body.params !== undefined && !isObject(body.params)) return 'params must be an object'
  if (body.method === 'tools/call') {
    const params = (body.params ?? {}) as Record<string, unknown>
    if (typeof params.name !== 'string') return 'tools/call needs params.name, the tool\'s name'
    if (params.arguments !== undefined && !isObject(params.arguments)) return 'params.arguments must be an object'
  }
  return null
}

/** A body that is not JSON: answered with a JSON-RPC parse error, as MCP clients expect. */
const NOT_JSON = Symbol('not json')

const rpcError = (reply: FastifyReply, status: number, code: number, message: string) =>
  reply.status(status).type('application/json').send({ jsonrpc: '2.0', error: { code, message }, id: null })

/**
 * MCP over Streamable HTTP at /mcp, through the official SDKs: 2026-07-28 requests statelessly (v2's handler, above),
 * 2025-11-25 and older in MCP sessions (v1's transport). Each MCP session is one of our sessions
 * (its Mcp-Session-Id is the session id, so the monitor shows it); deleting either ends both. The API key comes as a
 * Bearer header like everywhere else. MCP sessions live in the process that initialized them: with several replicas,
 * route /mcp by the Mcp-Session-Id header.
 */
const routes: FastifyPluginAsync = async (app) => {
  const deps = { runs: app.runs, tasks: new RunTasks(), sandboxes: app.sandboxes, version: app.config.version, maxUploadBytes: app.config.MAX_UPLOAD_BYTES }
  const live = new Map<string, McpSession>()

  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, JSON.parse(body as string))
    } catch {
      done(null, NOT_JSON)
    }
  })

  /** The MCP session of the request's Mcp-Session-Id, if it is this key's and its session still exists. */
  const existing = async (request: FastifyRequest, id: string): Promise<McpSession | null> => {
    const entry = live.get(id)
    if (!entry || entry.owner !== request.principal.name) return null
    if (!(await app.sessions.find(id))) { // deleted through the REST API: the MCP session ends with it
      await entry.transport.close().catch(() => {})
      return null
    }
    return entry
  }

  const start = async (request: FastifyRequest): Promise<McpSession> => {
    const session = await app.sessions.create(request.principal, { title: 'MCP session', metadata: { source: 'mcp' } })
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => session.id,
      onsessionclosed: async (id) => { await endSession(id) }
    })
    const entry: McpSession = { transport, server: mcpServer(deps, session), owner: request.principal.name, lastUsed: Date.now() }
    transport.onclose = () => { live.delete(session.id) }
    live.set(session.id, entry)
    await entry.server.connect(transport)
    return entry
  }

  /** Ends an MCP session: our session and its sandbox go with it. */
  const endSession = async (id: string) => {
    live.delete(id)
    const session = await app.sessions.find(id)
    if (session) await app.runs.endSession(session)
  }

  // 2026-07-28 requests (the per-request envelope, no MCP session): a server per request from the v2 SDK's handler;
  // everything else (initialize, Mcp-Session-Id, 2025-era calls) keeps the sessions below.
  const workspaces = new Workspaces(app.sessions, app.store)
  const modern = createMcpHandler((ctx) => modernServer({ ...deps, sessions: app.sessions, store: app.store }, workspaces, (ctx.authInfo?.extra as { principal: Principal }).principal), {
    legacy: 'reject',
    onerror: (err) => { app.log.debug({ err }, 'a 2026-07-28 MCP request failed') }
  })
  const webRequest = (request: FastifyRequest, init: RequestInit = {}) => {
    const headers = new Headers()
    for (const [name, value] of Object.entries(request.headers)) {
      if (value === undefined) continue
      for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v)
    }
    return new Request(`http://${request.host}${request.url}`, { method: request.method, headers, ...init })
  }
  const serveModern = async (request: FastifyRequest, reply: FastifyReply) => {
    // A client that goes away cancels the call: the SDK aborts the tool's signal, which interrupts the run.
    const gone = new AbortController()
    reply.raw.on('close', () => { if (!reply.raw.writableFinished) gone.abort() })
    const response = await modern.fetch(webRequest(request, { body: JSON.stringify(request.body), signal: gone.signal }), {
      authInfo: { token: 'api-key', clientId: request.principal.name, scopes: [], extra: { principal: request.principal } },
      parsedBody: request.body
    })
    reply.status(response.status)
    response.headers.forEach((value, name) => { if (name !== 'content-length') reply.header(name, value) })
    return response.body ? await reply.send(Readable.fromWeb(response.body as WebReadableStream)) : await reply.send()
  }

  const handler = async (request: FastifyRequest, reply: FastifyReply) => {
    if (request.body === NOT_JSON) return rpcError(reply, 400, -32700, 'Parse error: the body is not JSON')
    if (request.method === 'POST' && typeof request.headers['mcp-session-id'] !== 'string' && !(await isLegacyRequest(webRequest(request), request.body).catch(() => true))) {
      return await serveModern(request, reply)
    }
    const id = request.headers['mcp-session-id']
    let entry: McpSession | null
    if (typeof id === 'string') {
      entry = await existing(request, id)
      if (!entry) return rpcError(reply, 404, -32001, 'Session not found')
    } else if (request.method === 'POST' && opensSession(request.body)) {
      entry = await start(request)
    } else if (request.method === 'POST' && isInitializeRequest(request.body)) {
      return rpcError(reply, 400, -32600, 'Invalid Request: initialize must be a JSON-RPC 2.0 request with "jsonrpc": "2.0" and an id')
    } else {
      return rpcError(reply, 400, -32000, 'Bad Request: send initialize first, then the Mcp-Session-Id it returns')
    }
    entry.lastUsed = Date.now()
    const invalid = invalidParams(request.body)
    if (invalid) return reply.status(200).type('application/json').send({ jsonrpc: '2.0', id: (request.body as { id: unknown }).id, error: { code: -32602, message: `Invalid params: ${invalid}` } })
    reply.hijack()
    await entry.transport.handleRequest(request.raw, reply.raw, request.body)
    entry.lastUsed = Date.now()
  }

  // An MCP session nobody has used for MCP_SESSION_IDLE_S ends (its server object, our session and its sandbox):
  // clients that never send DELETE cannot pile them up.
  const idleMs = app.config.MCP_SESSION_IDLE_S * 1000
  const sweep = setInterval(() => {
    const now = Date.now()
    for (const [id, entry] of live) {
      if (now - entry.lastUsed < idleMs) continue
      live.delete(id)
      app.log.info({ session: id }, 'an idle MCP session ended')
      void entry.transport.close().catch(() => {}).then(() => endSession(id)).catch(() => {})
    }
  }, Math.min(60_000, Math.max(100, idleMs / 4)))
  sweep.unref()

  const schema = { hide: true } // MCP speaks JSON-RPC; its tools are listed by tools/list, not in OpenAPI
  app.post('', { schema, config: { accessLog: 'debug' } }, handler)
  app.get('', { schema }, handler)
  app.delete('', { schema }, handler)

  app.addHook('onClose', async () => {
    clearInterval(sweep)
    await Promise.all([...live.values()].map(e => e.transport.close().catch(() => {})))
    live.clear()
  })
}

export default routes

import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { randomUUID } from 'node:crypto'
import { Type } from 'typebox'
import { AppError, SandboxesDisabled } from '../../services/errors.js'
import { clientGone, heartbeat, protocolErrors } from '../../plugins/route-kit.js'
import { JUPYTER_V1_PROTOCOL, decodeFrame, encodeFrame } from '../../services/jupyter/messages.js'
import { JupyterKernels, type SessionFields } from '../../services/jupyter/kernels.js'

/** Jupyter clients read `message` (ResponseError); our own clients read `error`. */
const JupyterErrorSchema = Type.Object({
  message: Type.String(),
  reason: Type.String(),
  error: Type.Object({ message: Type.String(), type: Type.String(), code: Type.String() }, { additionalProperties: true })
}, { description: 'an error, in the shape Jupyter clients read, with our error object beside it' })
const jupyterErrors = Object.fromEntries([400, 401, 403, 404, 409, 413, 415, 429, 503].map(status => [status, JupyterErrorSchema]))
const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) })
type WithId = { Params: { id: string } }

/** The JSON body as an object ({} when there is none); @jupyterlab/services sends its JSON as text/plain (fetch's default). */
function body (request: FastifyRequest): Record<string, unknown> {
  let value = request.body
  if (typeof value === 'string' && value.trim()) {
    try {
      value = JSON.parse(value)
    } catch {
      throw new AppError(400, 'invalid_json', 'The body is not valid JSON')
    }
  }
  if (value === undefined || value === null || value === '') return {}
  if (typeof value !== 'object' || Array.isArray(value)) throw new AppError(400, 'validation_error', 'The body must be a JSON object')
  return value as Record<string, unknown>
}

/** A kernel name from the body: absent, or a string. */
function kernelName (value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') throw new AppError(400, 'validation_error', 'body/name must be a kernel name (a string)')
  return value
}

/** A Jupyter session's path, name and type from the body. */
function sessionFields (b: Record<string, unknown>): SessionFields {
  const fields: SessionFields = {}
  for (const key of ['path', 'name', 'type'] as const) {
    const value = b[key]
    if (value === undefined || value === null) continue
    if (typeof value !== 'string' || value.length > 1024) throw new AppError(400, 'validation_error', `body/${key} must be a string of at most 1024 characters`)
    fields[`jupyter_${key}`] = value
  }
  return fields
}

/** The kernel a session asks for: an existing one by id, or a new one by name. */
function kernelRequest (b: Record<string, unknown>): { id?: string, name?: string } | null {
  const k = b.kernel
  if (k === undefined || k === null) return null
  if (typeof k !== 'object' || Array.isArray(k)) throw new AppError(400, 'validation_error', 'body/kernel must be an object with an id or a name')
  const { id, name } = k as { id?: unknown, name?: unknown }
  return { ...(typeof id === 'string' ? { id } : {}), ...(typeof name === 'string' ? { name } : {}) }
}

/**
 * The Jupyter Server API subset that kernel clients use (Open WebUI's code interpreter, @jupyterlab/services,
 * kernel-gateway clients), at /jupyter: the wire format over services/jupyter/kernels.ts.
 */
const routes: FastifyPluginAsync = async (app) => {
  const kernels = new JupyterKernels({
    sessions: app.sessions,
    runs: app.runs,
    sandboxes: app.sandboxes,
    limitAction: app.limitAction,
    maxExecutionTimeoutMs: app.config.MAX_EXECUTION_TIMEOUT_MS,
    log: app.log.child({ component: 'jupyter' })
  })
  const config = { jupyterToken: true }
  app.sockets.offer(JUPYTER_V1_PROTOCOL, url => url.startsWith(`${app.prefix}/`))

  // Clients send Content-Type: application/json on bodiless calls (interrupt, shutdown): an empty body is no body.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, raw, done) => {
    const text = String(raw)
    if (!text.trim()) return done(null, undefined)
    try {
      done(null, JSON.parse(text))
    } catch {
      done(new AppError(400, 'invalid_json', 'The body is not valid JSON'), undefined)
    }
  })

  // Jupyter clients show `message` (ResponseError); our own clients read `error`.
  app.setErrorHandler(protocolErrors(e => ({ message: e.message, reason: e.code, error: { message: e.message, type: e.type, code: e.code, ...e.extra } })))

  const enabled = async () => {
    if (!app.config.SANDBOX_ENABLED) throw SandboxesDisabled()
  }

  const schema = { tags: ['jupyter'] }
  // Every status a route answers, documented: its success (any Jupyter model) and the errors (Jupyter's shape).
  const answers = (status: 200 | 201 | 204) => ({ response: { [status]: status === 204 ? Type.Null() : Type.Any({ description: 'the Jupyter Server model' }), ...jupyterErrors } })
  const withId = { ...schema, params: IdParams }

  app.get('/api', { config, schema: { ...schema, ...answers(200), summary: 'Jupyter Server version' } }, async () => ({ version: '2.14.0' }))
  app.get('/api/status', { config, schema: { ...schema, ...answers(200), summary: 'Jupyter Server status' } }, async (request) => {
    const mine = await kernels.list(request.principal)
    return { started: new Date(Date.now() - process.uptime() * 1000).toISOString(), last_activity: new Date().toISOString(), connections: kernels.connections, kernels: mine.length }
  })

  app.get('/api/kernelspecs', { config, schema: { ...schema, ...answers(200), summary: 'The kernels this server starts: one per language of its image' } }, async () => kernels.specModels())

  app.get('/api/kernels', { config, schema: { ...schema, ...answers(200), summary: "This key's kernels" } }, async (request) =>
    await Promise.all((await kernels.list(request.principal)).map(k => kernels.model(k))))

  app.post('/api/kernels', { config, preHandler: enabled, schema: { ...schema, ...answers(201), summary: 'Start a kernel (a sandbox from the warm pool)' } }, async (request, reply) => {
    const session = await kernels.start(request.principal, kernelName(body(request).name), clientGone(reply))
    return reply.status(201).header('location', `${request.url.split('?')[0]}/${session.id}`).send(await kernels.model(session))
  })

  app.get<WithId>('/api/kernels/:id', { config, schema: { ...withId, ...answers(200), summary: 'A kernel' } }, async (request) =>
    await kernels.model(await kernels.get(request.params.id, request.principal)))

  app.delete<WithId>('/api/kernels/:id', { config, schema: { ...withId, ...answers(204), summary: 'Shut a kernel down (its sandbox is removed)' } }, async (request, reply) => {
    await kernels.shutdown(await kernels.get(request.params.id, request.principal))
    return reply.status(204).send()
  })

  app.post<WithId>('/api/kernels/:id/interrupt', { config, schema: { ...withId, ...answers(204), summary: 'Interrupt the running cell (state is kept)' } }, async (request, reply) => {
    await kernels.interrupt(await kernels.get(request.params.id, request.principal))
    return reply.status(204).send()
  })

  app.post<WithId>('/api/kernels/:id/restart', { config, preHandler: enabled, schema: { ...withId, ...answers(200), summary: 'Restart the kernel: variables are cleared, files are kept' } }, async (request) => {
    const session = await kernels.get(request.params.id, request.principal)
    await kernels.restart(session)
    return await kernels.model(session)
  })

  // --- Jupyter sessions (notebook ↔ kernel), kept in the kernel's metadata ---------------------------------------------
  app.get('/api/sessions', { config, schema: { ...schema, ...answers(200), summary: "This key's Jupyter sessions" } }, async (request) =>
    await Promise.all((await kernels.sessionsOf(request.principal)).map(k => kernels.sessionModel(k))))

  app.get<WithId>('/api/sessions/:id', { config, schema: { ...withId, ...answers(200), summary: 'A Jupyter session' } }, async (request) =>
    await kernels.sessionModel(await kernels.findSession(request.params.id, request.principal)))

  app.post('/api/sessions', { config, preHandler: enabled, schema: { ...schema, ...answers(201), summary: 'Create a Jupyter session (with a new or an existing kernel)' } }, async (request, reply) => {
    const b = body(request)
    const kernel = await kernels.createSession(request.principal, randomUUID(), sessionFields(b), kernelRequest(b), clientGone(reply))
    return reply.status(201).send(await kernels.sessionModel(kernel))
  })

  app.patch<WithId>('/api/sessions/:id', { config, schema: { ...withId, ...answers(200), summary: 'Rename a Jupyter session or change its kernel' } }, async (request) => {
    const b = body(request)
    return await kernels.sessionModel(await kernels.updateSession(request.principal, request.params.id, sessionFields(b), kernelRequest(b)))
  })

  app.delete<WithId>('/api/sessions/:id', { config, schema: { ...withId, ...answers(204), summary: 'End a Jupyter session and shut its kernel down' } }, async (request, reply) => {
    await kernels.shutdown(await kernels.findSession(request.params.id, request.principal))
    return reply.status(204).send()
  })

  // --- the kernel's channels: Jupyter's frames over a WebSocket ------------------------------------------------------
  app.get<WithId>('/api/kernels/:id/channels', {
    websocket: true,
    config,
    preHandler: async (request) => {
      await app.sockets.check(request)
      await kernels.get(request.params.id, request.principal)
    },
    schema: { hide: true, params: IdParams } as object
  }, (socket: WebSocket, request) => {
    const id = request.params.id
    const log = request.log.child({ kernel: id })
    const protocol = socket.protocol === JUPYTER_V1_PROTOCOL ? JUPYTER_V1_PROTOCOL : ''
    app.sockets.hold(request.principal, socket)
    const channel = kernels.connect(id, request.principal, {
      send: (message) => { if (socket.readyState === socket.OPEN) socket.send(encodeFrame(message, protocol)) },
      close: (code, reason) => socket.close(code, reason),
      terminate: () => socket.terminate()
    }, log)
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      const message = decodeFrame(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer), isBinary, protocol)
      if (message) channel.receive(message)
      else log.debug('ignored a frame that is not a Jupyter message')
    })
    // Keep the sandbox from being reaped while a client is connected; drop peers that stop answering pings.
    heartbeat(socket, app.config.WS_PING_INTERVAL_MS, { onBeat: () => { app.runs.keepAlive(id).catch(() => {}) } })
    socket.on('close', channel.leave)
  })

  app.addHook('onClose', async () => { kernels.close() })
}

export default routes

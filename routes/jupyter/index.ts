import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { randomUUID } from 'node:crypto'
import type { Principal } from '../../services/auth.js'
import type { Session } from '../../schemas/sessions.js'
import type { Language } from '../../schemas/sandboxes.js'
import { AppError, SandboxesDisabled } from '../../services/errors.js'
import { clientGone, heartbeat, protocolErrors } from '../../plugins/route-kit.js'
import { runError } from '../../services/interpreter/runs.js'
import { Type } from 'typebox'

/** Jupyter clients read `message` (ResponseError); our own clients read `error`. */
const JupyterErrorSchema = Type.Object({
  message: Type.String(),
  reason: Type.String(),
  error: Type.Object({ message: Type.String(), type: Type.String(), code: Type.String() }, { additionalProperties: true })
}, { description: 'an error, in the shape Jupyter clients read, with our error object beside it' })
const jupyterErrors = Object.fromEntries([400, 401, 403, 404, 409, 413, 415, 429, 503].map(status => [status, JupyterErrorSchema]))
import {
  JUPYTER_V1_PROTOCOL, MessageFactory, decodeFrame, encodeFrame, errorContent, fallbackReply, iopubFor, kernelInfo,
  kernelSpecs, specModel, type JupyterHeader, type JupyterMessage, type KernelSpec
} from '../../services/jupyter.js'

/** One client's channels socket. */
interface Connection { socket: WebSocket, protocol: string }

/** What this process knows of a kernel: its sockets, and the queue its execute_requests wait in (a kernel runs one at a time). */
interface KernelState {
  connections: Set<Connection>
  queue: Promise<void>
  /** execute_requests numbered up to this are aborted (an earlier one failed with stop_on_error). */
  abortThrough: number
  enqueued: number
}

const SOURCE = 'jupyter'
const ALL = { offset: 0, limit: 10_000 }

/**
 * The Jupyter Server API subset that kernel clients use (Open WebUI's code interpreter, @jupyterlab/services,
 * kernel-gateway clients), at /jupyter. A kernel is one of our sessions with its sandbox: created with the same keys
 * and limits, its executions are runs of that session (history, live monitor), its sandbox reaped when idle (and
 * started again, state lost, if the kernel is used after that). Jupyter sessions are kept in the kernel's metadata.
 */
const routes: FastifyPluginAsync = async (app) => {
  const { sessions, runs, sandboxes } = app
  const specs = kernelSpecs(sandboxes.languages())
  const specByName = new Map(specs.map(s => [s.name, s]))
  const defaultSpec = specs[0]
  const kernels = new Map<string, KernelState>()
  const config = { jupyterToken: true }

  const state = (id: string): KernelState => {
    let s = kernels.get(id)
    if (!s) {
      s = { connections: new Set(), queue: Promise.resolve(), abortThrough: 0, enqueued: 0 }
      kernels.set(id, s)
    }
    return s
  }

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

  const specOf = (session: Session): KernelSpec => specByName.get(session.metadata.jupyter_kernel ?? '') ?? defaultSpec

  /** The kernel (one of the key's Jupyter sessions) or 404, as for any other key's resource. */
  const getKernel = async (id: string, principal: Principal): Promise<Session> => {
    const session = await sessions.get(id, principal)
    if (session.metadata.source !== SOURCE) throw new AppError(404, 'kernel_not_found', `Kernel does not exist: ${id}`, 'not_found_error')
    return session
  }

  const listKernels = async (principal: Principal): Promise<Session[]> =>
    (await sessions.list(principal, ALL)).items.filter(s => s.metadata.source === SOURCE)

  const kernelModel = async (session: Session) => ({
    id: session.id,
    name: specOf(session).name,
    last_activity: session.updated_at,
    execution_state: (await runs.running(session.id)) ? 'busy' : 'idle',
    connections: kernels.get(session.id)?.connections.size ?? 0
  })

  /** Starts a kernel: a session and its sandbox (from the warm pool); nothing is left behind when the start fails. */
  const startKernel = async (principal: Principal, name: unknown, signal?: AbortSignal, extra: Record<string, string> = {}): Promise<Session> => {
    if (name !== undefined && name !== null && typeof name !== 'string') throw new AppError(400, 'validation_error', 'body/name must be a kernel name (a string)')
    const spec = name === undefined || name === null || name === '' ? defaultSpec : specByName.get(name)
    if (!spec) throw new AppError(400, 'no_such_kernel', `No such kernel: ${name} (this server has ${specs.map(s => s.name).join(', ')})`)
    const session = await sessions.create(principal, { title: `Jupyter kernel (${spec.name})`, metadata: { source: SOURCE, jupyter_kernel: spec.name, ...extra } })
    try {
      await runs.sessionSandbox(session, signal)
    } catch (err) {
      await runs.endSession(session).catch(() => {})
      throw err
    }
    return session
  }

  /** Shuts a kernel down: its sockets close, its session and sandbox are removed. */
  const shutdown = async (session: Session) => {
    const local = kernels.get(session.id)
    kernels.delete(session.id)
    for (const c of local?.connections ?? []) c.socket.close(1000, 'kernel shut down')
    await runs.endSession(session)
  }

  /** Fresh kernel processes in the same sandbox (files kept), as Jupyter's restart. */
  const restart = async (session: Session) => {
    const record = await runs.sessionSandbox(session)
    await (await sandboxes.handle(record)).restart(specOf(session).language.kernel ?? 'python')
  }

  /** The JSON body as an object ({} when there is none); @jupyterlab/services sends its JSON as text/plain (fetch's default). */
  const body = (request: FastifyRequest): Record<string, unknown> => {
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

  const schema = { tags: ['jupyter'] }
  // Every status a route answers, documented: its success (any Jupyter model) and the errors (Jupyter's shape).
  const answers = (status: 200 | 201 | 204) => ({ response: { [status]: status === 204 ? Type.Null() : Type.Any({ description: 'the Jupyter Server model' }), ...jupyterErrors } })

  app.get('/api', { config, schema: { ...schema, ...answers(200), summary: 'Jupyter Server version' } }, async () => ({ version: '2.14.0' }))
  app.get('/api/status', { config, schema: { ...schema, ...answers(200), summary: 'Jupyter Server status' } }, async (request) => {
    const mine = await listKernels(request.principal)
    return { started: new Date(Date.now() - process.uptime() * 1000).toISOString(), last_activity: new Date().toISOString(), connections: [...kernels.values()].reduce((n, k) => n + k.connections.size, 0), kernels: mine.length }
  })

  app.get('/api/kernelspecs', { config, schema: { ...schema, ...answers(200), summary: 'The kernels this server starts: one per language of its image' } }, async () => ({
    default: defaultSpec.name,
    kernelspecs: Object.fromEntries(specs.map(s => [s.name, specModel(s)]))
  }))

  app.get('/api/kernels', { config, schema: { ...schema, ...answers(200), summary: "This key's kernels" } }, async (request) =>
    await Promise.all((await listKernels(request.principal)).map(kernelModel)))

  app.post('/api/kernels', { config, preHandler: enabled, schema: { ...schema, ...answers(201), summary: 'Start a kernel (a sandbox from the warm pool)' } }, async (request, reply) => {
    const session = await startKernel(request.principal, body(request).name, clientGone(reply))
    return reply.status(201).header('location', `${request.url.split('?')[0]}/${session.id}`).send(await kernelModel(session))
  })

  app.get('/api/kernels/:id', { config, schema: { ...schema, ...answers(200), summary: 'A kernel' } }, async (request) =>
    await kernelModel(await getKernel((request.params as { id: string }).id, request.principal)))

  app.delete('/api/kernels/:id', { config, schema: { ...schema, ...answers(204), summary: 'Shut a kernel down (its sandbox is removed)' } }, async (request, reply) => {
    await shutdown(await getKernel((request.params as { id: string }).id, request.principal))
    return reply.status(204).send()
  })

  app.post('/api/kernels/:id/interrupt', { config, schema: { ...schema, ...answers(204), summary: 'Interrupt the running cell (state is kept)' } }, async (request, reply) => {
    const session = await getKernel((request.params as { id: string }).id, request.principal)
    await runs.interrupt(session.id)
    return reply.status(204).send()
  })

  app.post('/api/kernels/:id/restart', { config, preHandler: enabled, schema: { ...schema, ...answers(200), summary: 'Restart the kernel: variables are cleared, files are kept' } }, async (request) => {
    const session = await getKernel((request.params as { id: string }).id, request.principal)
    await restart(session)
    return await kernelModel(session)
  })

  // --- Jupyter sessions (notebook ↔ kernel), kept in the kernel's metadata ---------------------------------------------
  const sessionModel = async (kernel: Session) => ({
    id: kernel.metadata.jupyter_session,
    path: kernel.metadata.jupyter_path ?? '',
    name: kernel.metadata.jupyter_name ?? '',
    type: kernel.metadata.jupyter_type ?? 'notebook',
    kernel: await kernelModel(kernel),
    notebook: { path: kernel.metadata.jupyter_path ?? '', name: kernel.metadata.jupyter_name ?? '' }
  })
  const sessionFields = (b: Record<string, unknown>): Record<string, string> => {
    const fields: Record<string, string> = {}
    for (const key of ['path', 'name', 'type'] as const) {
      const value = b[key]
      if (value === undefined || value === null) continue
      if (typeof value !== 'string' || value.length > 1024) throw new AppError(400, 'validation_error', `body/${key} must be a string of at most 1024 characters`)
      fields[`jupyter_${key}`] = value
    }
    return fields
  }
  const findSession = async (id: string, principal: Principal): Promise<Session> => {
    const kernel = (await listKernels(principal)).find(k => k.metadata.jupyter_session === id)
    if (!kernel) throw new AppError(404, 'session_not_found', `Session not found: ${id}`, 'not_found_error')
    return kernel
  }
  const kernelRequest = (b: Record<string, unknown>): { id?: string, name?: string } | null => {
    const k = b.kernel
    if (k === undefined || k === null) return null
    if (typeof k !== 'object' || Array.isArray(k)) throw new AppError(400, 'validation_error', 'body/kernel must be an object with an id or a name')
    const { id, name } = k as { id?: unknown, name?: unknown }
    return { ...(typeof id === 'string' ? { id } : {}), ...(typeof name === 'string' ? { name } : {}) }
  }
  /** Gives the Jupyter session's fields to a kernel (and takes them from the one it had). */
  const attach = (kernel: Session, fields: Record<string, string>) => sessions.setMetadata(kernel, fields)

  app.get('/api/sessions', { config, schema: { ...schema, ...answers(200), summary: "This key's Jupyter sessions" } }, async (request) =>
    await Promise.all((await listKernels(request.principal)).filter(k => k.metadata.jupyter_session).map(sessionModel)))

  app.get('/api/sessions/:id', { config, schema: { ...schema, ...answers(200), summary: 'A Jupyter session' } }, async (request) =>
    await sessionModel(await findSession((request.params as { id: string }).id, request.principal)))

  app.post('/api/sessions', { config, preHandler: enabled, schema: { ...schema, ...answers(201), summary: 'Create a Jupyter session (with a new or an existing kernel)' } }, async (request, reply) => {
    const b = body(request)
    const fields = sessionFields(b)
    const path = fields.jupyter_path
    if (path !== undefined) { // jupyter_server returns the existing session of a path
      const existing = (await listKernels(request.principal)).find(k => k.metadata.jupyter_session && k.metadata.jupyter_path === path)
      if (existing) return reply.status(201).send(await sessionModel(existing))
    }
    const wanted = kernelRequest(b)
    const id = randomUUID()
    let kernel: Session
    if (wanted?.id) {
      kernel = await getKernel(wanted.id, request.principal)
      await attach(kernel, { jupyter_session: id, ...fields })
    } else {
      kernel = await startKernel(request.principal, wanted?.name, clientGone(reply), { jupyter_session: id, ...fields })
    }
    return reply.status(201).send(await sessionModel(kernel))
  })

  app.patch('/api/sessions/:id', { config, schema: { ...schema, ...answers(200), summary: 'Rename a Jupyter session or change its kernel' } }, async (request) => {
    const id = (request.params as { id: string }).id
    let kernel = await findSession(id, request.principal)
    const b = body(request)
    const fields = sessionFields(b)
    const wanted = kernelRequest(b)
    const mine = { jupyter_session: id, jupyter_path: kernel.metadata.jupyter_path ?? '', jupyter_name: kernel.metadata.jupyter_name ?? '', jupyter_type: kernel.metadata.jupyter_type ?? 'notebook', ...fields }
    if (wanted && (wanted.id ? wanted.id !== kernel.id : wanted.name !== undefined)) {
      const previous = kernel
      kernel = wanted.id ? await getKernel(wanted.id, request.principal) : await startKernel(request.principal, wanted.name, undefined, mine)
      await attach(kernel, mine)
      await shutdown(previous) // as jupyter_server does: the kernel the session leaves is shut down
    } else {
      await attach(kernel, mine)
    }
    return await sessionModel(kernel)
  })

  app.delete('/api/sessions/:id', { config, schema: { ...schema, ...answers(204), summary: 'End a Jupyter session and shut its kernel down' } }, async (request, reply) => {
    await shutdown(await findSession((request.params as { id: string }).id, request.principal))
    return reply.status(204).send()
  })

  // --- the kernel's channels ---------------------------------------------------------------------------------------
  const loadKernel = async (request: FastifyRequest) => {
    await app.sockets.check(request)
    await getKernel((request.params as { id: string }).id, request.principal)
  }

  app.get('/api/kernels/:id/channels', { websocket: true, config, preHandler: loadKernel, schema: { hide: true } as object }, (socket: WebSocket, request) => {
    channels(app, socket, request, { specOf, state, restart, shutdown, getKernel })
  })

  app.addHook('onClose', async () => {
    for (const k of kernels.values()) for (const c of k.connections) c.socket.terminate()
    kernels.clear()
  })
}

interface ChannelDeps {
  specOf: (s: Session) => KernelSpec
  state: (id: string) => KernelState
  restart: (s: Session) => Promise<void>
  shutdown: (s: Session) => Promise<void>
  getKernel: (id: string, p: Principal) => Promise<Session>
}

/** One channels socket: shell and control requests in, their replies back to this socket, iopub to every socket of the kernel. */
function channels (app: FastifyInstance, socket: WebSocket, request: FastifyRequest, deps: ChannelDeps): void {
  const { runs } = app
  const id = (request.params as { id: string }).id
  const principal = request.principal
  const log = request.log.child({ kernel: id })
  const conn: Connection = { socket, protocol: socket.protocol === JUPYTER_V1_PROTOCOL ? JUPYTER_V1_PROTOCOL : '' }
  const kernel = deps.state(id)
  kernel.connections.add(conn)
  app.sockets.hold(principal, socket)
  const factory = new MessageFactory(id)
  const timeoutMs = app.config.MAX_EXECUTION_TIMEOUT_MS

  const sendTo = (c: Connection, message: JupyterMessage) => {
    if (c.socket.readyState === c.socket.OPEN) c.socket.send(encodeFrame(message, c.protocol))
  }
  const reply = (channel: string, type: string, content: Record<string, unknown>, parent: Partial<JupyterHeader>) =>
    sendTo(conn, factory.make(channel, type, content, parent))
  const publish = (type: string, content: Record<string, unknown>, parent: Partial<JupyterHeader>) => {
    const message = type === 'status' ? factory.status(content.execution_state as 'busy', parent) : factory.make('iopub', type, content, parent)
    for (const c of kernel.connections) sendTo(c, message)
  }
  const session = () => deps.getKernel(id, principal)

  const execute = async (message: JupyterMessage, seq: number) => {
    const parent = message.header
    const content = message.content
    const code = typeof content.code === 'string' ? content.code : ''
    const silent = content.silent === true
    publish('status', { execution_state: 'busy' }, parent)
    let count = 0
    let failure: Record<string, unknown> | null = null
    try {
      if (seq <= kernel.abortThrough) {
        reply('shell', 'execute_reply', { status: 'aborted', execution_count: null }, parent)
        return
      }
      await app.limitAction(principal, id) // a cell counts as an execute request would (in the queue: cells keep their order)
      const current = await session()
      const language = deps.specOf(current).language.id as Language
      const run = await runs.executeDirect(current, language, code, {
        via: 'jupyter',
        timeoutMs,
        onEvent: (e) => {
          if (e.type === 'start') count = e.execution_count
          for (const [type, body] of iopubFor(e, count, code, silent)) publish(type, body, parent)
          if (e.type === 'error') failure = errorContent(e)
        }
      })
      const outcome = await run.done
      if (outcome.error && !failure) {
        failure = { ename: outcome.error.code, evalue: outcome.error.message, traceback: [`${outcome.error.code}: ${outcome.error.message}`] }
        publish('error', failure, parent)
      }
    } catch (err) {
      const e = runError(err)
      failure = { ename: e.code, evalue: e.message, traceback: [`${e.code}: ${e.message}`] }
      publish('error', failure, parent)
    } finally {
      if (seq > kernel.abortThrough || failure) {
        if (failure && content.stop_on_error !== false) kernel.abortThrough = kernel.enqueued // what is queued behind a failed cell is aborted
        reply('shell', 'execute_reply', failure
          ? { status: 'error', execution_count: count, ...failure }
          : { status: 'ok', execution_count: count, user_expressions: {}, payload: [] }, parent)
      }
      publish('status', { execution_state: 'idle' }, parent)
    }
  }

  const handle = async (message: JupyterMessage) => {
    const parent = message.header
    const type = parent.msg_type
    const channel = message.channel === 'control' ? 'control' : 'shell'
    switch (type) {
      case 'execute_request': {
        const seq = ++kernel.enqueued
        kernel.queue = kernel.queue.then(() => execute(message, seq)).catch((err: Error) => log.warn({ err: err.message }, 'a jupyter execution failed'))
        return
      }
      case 'kernel_info_request': {
        publish('status', { execution_state: 'busy' }, parent)
        reply(channel, 'kernel_info_reply', kernelInfo(deps.specOf(await session())), parent)
        publish('status', { execution_state: 'idle' }, parent)
        return
      }
      case 'interrupt_request':
        await runs.interrupt(id)
        return reply(channel, 'interrupt_reply', { status: 'ok' }, parent)
      case 'shutdown_request': {
        const restarting = message.content.restart === true
        const current = await session()
        if (restarting) {
          await deps.restart(current)
          kernel.abortThrough = kernel.enqueued
        }
        reply(channel, 'shutdown_reply', { status: 'ok', restart: restarting }, parent)
        if (!restarting) await deps.shutdown(current)
        return
      }
      case 'comm_open': // no comms (widgets): the client is told the comm is closed at once
        return publish('comm_close', { comm_id: message.content.comm_id ?? '', data: {} }, parent)
      case 'input_reply': case 'comm_msg': case 'comm_close':
        return
      default: {
        const content = fallbackReply(type, message.content)
        if (content) reply(channel, type.replace(/_request$/, '_reply'), content, parent)
        else log.debug({ type }, 'ignored a jupyter message')
      }
    }
  }

  socket.on('message', (data: Buffer, isBinary: boolean) => {
    const message = decodeFrame(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer), isBinary, conn.protocol)
    if (!message) {
      log.debug('ignored a frame that is not a Jupyter message')
      return
    }
    handle(message).catch((err: unknown) => {
      const e = runError(err)
      const type = message.header.msg_type
      if (type.endsWith('_request')) {
        reply(message.channel === 'control' ? 'control' : 'shell', type.replace(/_request$/, '_reply'), { status: 'error', ename: e.code, evalue: e.message, traceback: [] }, message.header)
      }
      if (e.statusCode === 404) socket.close(1011, 'kernel does not exist')
    })
  })

  // Keep the sandbox from being reaped while a client is connected; drop peers that stop answering pings.
  heartbeat(socket, app.config.WS_PING_INTERVAL_MS, { onBeat: () => { runs.keepAlive(id).catch(() => {}) } })
  socket.on('close', () => { kernel.connections.delete(conn) })
}

export default routes

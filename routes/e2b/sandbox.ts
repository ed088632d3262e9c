import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import multipart from '@fastify/multipart'
import { Type } from 'typebox'
import type { Readable } from 'node:stream'
import type { E2bControl } from '../../services/e2b/control.js'
import { EnvdService, basicUser, checkUser } from '../../services/e2b/envd.js'
import { InterpreterService } from '../../services/e2b/interpreter.js'
import { CONNECT_STATUS, ConnectError, endOfStream, envelope, errorJson, parseJson, readEnvelope, toConnectError } from '../../services/e2b/connect.js'
import { AppError } from '../../services/errors.js'
import type { Subscription } from '../../services/sandbox/sandbox.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { logError, toAppError } from '../../plugins/route-kit.js'
import { proxyToPort } from '../ports.js'

const ENVD_PORT = 49983
const INTERPRETER_PORT = 49999
const MAX_MESSAGE = 4 * 1024 * 1024
const ErrorBody = Type.Object({ code: Type.Integer(), message: Type.String() })
/** What any data-plane call may answer: a missing or bad header (400), token (401), a sandbox gone (502), and the rest. */
const errors = Object.fromEntries([400, 401, 403, 404, 409, 410, 413, 415, 429, 502, 503, 507].map(code => [code, ErrorBody]))

type Unary = (record: SandboxRecord, req: unknown) => Promise<unknown>
/** A server-streaming RPC, and the message its stream says "still here" with. */
interface Streaming { open: (record: SandboxRecord, req: unknown, send: (m: unknown) => void) => Promise<Subscription>, keepalive: unknown }
const PROCESS_KEEPALIVE = { event: { keepalive: {} } }

/**
 * E2B's data plane (E2B_SANDBOX_URL=http://host:8000/e2b/sandbox): every call names its sandbox and port in the
 * headers E2b-Sandbox-Id and E2b-Sandbox-Port and carries the sandbox's access token. Port 49983 is envd (Connect RPC
 * for processes and the file system, REST /files and /health), 49999 the code interpreter (/execute, /contexts); any
 * other port is proxied to the app listening on it inside the sandbox.
 */
const routes: FastifyPluginAsyncTypebox<{ control: E2bControl }> = async (app, { control }) => {
  const envd = new EnvdService(app.sandboxes, app.workspace, { maxWatchers: app.config.SANDBOX_MAX_WATCHERS, maxWatcherEvents: 10_000 })
  const interpreter = new InterpreterService(app.sandboxes)
  const sweep = setInterval(() => { void envd.sweep(10 * 60_000) }, 60_000)
  app.addHook('onClose', async () => { clearInterval(sweep); await envd.close() })
  const tags = ['e2b']
  const config = { public: true }
  const records = new WeakMap<FastifyRequest, SandboxRecord>()

  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
  await app.register(multipart, { preservePath: true, limits: { fileSize: app.config.MAX_UPLOAD_BYTES, files: 1000, fields: 100 } })

  // envd and the interpreter answer errors as {code, message}; Connect RPCs answer their own (see rpc below).
  app.setErrorHandler((err, request, reply) => {
    const e = err instanceof ConnectError ? new AppError(CONNECT_STATUS[err.code], err.code, err.message) : toAppError(err as Error)
    logError(request, err, e)
    if (typeof e.extra.retry_after === 'number') reply.header('retry-after', e.extra.retry_after)
    return reply.status(e.statusCode).send({ code: e.statusCode, message: e.message })
  })

  const header = (request: FastifyRequest, name: string) => {
    const v = request.headers[name]
    return typeof v === 'string' ? v : undefined
  }
  const portOf = (request: FastifyRequest) => Number(header(request, 'e2b-sandbox-port') ?? ENVD_PORT)

  // Every call: the sandbox it names, if the token is that sandbox's (401), and it exists (502, as E2B's edge answers).
  app.addHook('preHandler', async (request) => {
    const id = header(request, 'e2b-sandbox-id')
    if (!id) throw new AppError(400, 'missing_sandbox_id', 'Name the sandbox in the E2b-Sandbox-Id header (E2B_SANDBOX_URL mode)')
    const port = portOf(request)
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new AppError(400, 'validation_error', 'E2b-Sandbox-Port must be a port number')
    const { record, principal } = await control.authorize(id, header(request, 'x-access-token') ?? header(request, 'e2b-traffic-access-token'))
    request.principal = principal
    records.set(request, record)
    checkUser(basicUser(request.headers.authorization))
  })
  const recordOf = (request: FastifyRequest) => records.get(request)!

  /** A request for another port than `port` goes to the app listening there (its own path, headers and body). */
  const forOther = (request: FastifyRequest, port: number) => portOf(request) !== port
  const proxy = async (request: FastifyRequest, reply: FastifyReply) =>
    await proxyToPort(app, { sandbox: recordOf(request), port: portOf(request), prefix: app.prefix }, request, reply)

  const readBody = async (request: FastifyRequest): Promise<Buffer> => {
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of (request.body ?? []) as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > MAX_MESSAGE + 5) throw new ConnectError('resource_exhausted', `messages are limited to ${MAX_MESSAGE} bytes`)
      chunks.push(chunk)
    }
    return Buffer.concat(chunks)
  }

  const unary: Record<string, Unary> = {
    'process.Process/List': async (r) => await envd.list(r),
    'process.Process/SendInput': async (r, q) => await envd.sendInput(r, q),
    'process.Process/SendSignal': async (r, q) => await envd.sendSignal(r, q),
    'process.Process/CloseStdin': async (r, q) => await envd.closeStdin(r, q),
    'process.Process/Update': async (r, q) => await envd.update(r, q),
    'filesystem.Filesystem/Stat': async (r, q) => await envd.stat(r, q),
    'filesystem.Filesystem/MakeDir': async (r, q) => await envd.makeDir(r, q),
    'filesystem.Filesystem/Move': async (r, q) => await envd.move(r, q),
    'filesystem.Filesystem/ListDir': async (r, q) => await envd.listDir(r, q),
    'filesystem.Filesystem/Remove': async (r, q) => await envd.remove(r, q),
    'filesystem.Filesystem/CreateWatcher': async (r, q) => await envd.createWatcher(r, q),
    'filesystem.Filesystem/GetWatcherEvents': async (r, q) => await envd.getWatcherEvents(r, q),
    'filesystem.Filesystem/RemoveWatcher': async (r, q) => await envd.removeWatcher(r, q)
  }
  const streaming: Record<string, Streaming> = {
    'process.Process/Start': { open: async (r, q, send) => await envd.start(r, q, send), keepalive: PROCESS_KEEPALIVE },
    'process.Process/Connect': { open: async (r, q, send) => await envd.connect(r, q, send), keepalive: PROCESS_KEEPALIVE },
    'filesystem.Filesystem/WatchDir': { open: async (r, q, send) => await envd.watchDir(r, q, send), keepalive: { keepalive: {} } }
  }

  /** A unary call: JSON in, JSON out; an error is its Connect code's HTTP status with {code, message}. */
  const callUnary = async (fn: Unary, request: FastifyRequest, reply: FastifyReply) => {
    try {
      const result = await fn(recordOf(request), parseJson(await readBody(request)))
      return reply.status(200).type('application/json').send(result)
    } catch (err) {
      const e = toConnectError(err)
      if (e.code === 'internal' || e.code === 'unavailable') logError(request, err, toAppError(err as Error))
      return reply.status(CONNECT_STATUS[e.code]).type('application/json').send(errorJson(e))
    }
  }

  /**
   * A server stream: enveloped messages as they come, keepalives while it is quiet (the SDK asks for them), and an
   * end-of-stream envelope. It ends with the process (or watch), the client going away, or its Connect-Timeout-Ms.
   */
  const callStreaming = async (rpc: Streaming, request: FastifyRequest, reply: FastifyReply) => {
    const record = recordOf(request)
    let sub: Subscription
    const held: Buffer[] = []
    let open = false
    const write = (chunk: Buffer) => { if (open) reply.raw.write(chunk); else held.push(chunk) }
    try {
      const message = readEnvelope(await readBody(request), MAX_MESSAGE)
      sub = await rpc.open(record, message, (m) => write(envelope(m)))
    } catch (err) {
      // Before the stream opened: a stream's error travels in its end-of-stream message (its HTTP status stays 200).
      const e = toConnectError(err)
      if (e.code === 'internal') logError(request, err, toAppError(err as Error))
      return reply.status(200).type('application/connect+json').send(endOfStream(e))
    }
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'application/connect+json', 'cache-control': 'no-store' })
    open = true
    for (const chunk of held) reply.raw.write(chunk)
    const asked = Number(header(request, 'keepalive-ping-interval'))
    const beat = setInterval(() => {
      reply.raw.write(envelope(rpc.keepalive))
      app.sandboxes.touch(record).catch(() => {}) // a stream open is a use: the idle reaper leaves the sandbox alone
    }, Math.max(1, Math.min(Number.isFinite(asked) && asked > 0 ? asked : 30, 30)) * 1000)
    const deadlineMs = Number(header(request, 'connect-timeout-ms'))
    let timedOut = false
    const deadline = Number.isFinite(deadlineMs) && deadlineMs > 0 ? setTimeout(() => { timedOut = true; void sub.stop() }, deadlineMs) : undefined
    reply.raw.on('close', () => { void sub.stop() })
    let failure: ConnectError | undefined
    await sub.done.catch((err: unknown) => { failure = toConnectError(err) })
    clearInterval(beat)
    clearTimeout(deadline)
    if (timedOut) failure = new ConnectError('deadline_exceeded', 'the stream reached its timeout; the process goes on (connect to it again)')
    if (!reply.raw.writableEnded) reply.raw.end(endOfStream(failure))
  }

  app.post('/:service/:method', {
    config,
    schema: { tags, summary: 'envd over Connect (process.Process, filesystem.Filesystem): unary JSON or server streams', params: Type.Object({ service: Type.String({ maxLength: 64 }), method: Type.String({ maxLength: 64 }) }), hide: true }
  }, async (request, reply) => {
    if (forOther(request, ENVD_PORT)) return await proxy(request, reply)
    const name = `${request.params.service}/${request.params.method}`
    const streamed = (header(request, 'content-type') ?? '').startsWith('application/connect+json')
    const one = Object.hasOwn(unary, name) ? unary[name] : undefined
    const many = Object.hasOwn(streaming, name) ? streaming[name] : undefined
    if (one && !streamed) return await callUnary(one, request, reply)
    if (many && streamed) return await callStreaming(many, request, reply)
    const known = one ?? many
    const e = new ConnectError(known ? 'invalid_argument' : 'unimplemented', known
      ? `${name} is ${one ? 'unary (application/json)' : 'server-streaming (application/connect+json)'}`
      : `${name} is not offered by this server${name === 'process.Process/StreamInput' ? ' (send input with SendInput)' : ''}`)
    return reply.status(CONNECT_STATUS[e.code]).type('application/json').send(errorJson(e))
  })

  app.get('/health', { config, schema: { tags, summary: 'envd health (204)', response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    if (forOther(request, ENVD_PORT)) return await proxy(request, reply)
    return reply.status(204).send(null)
  })

  app.get('/files', {
    config,
    schema: { tags, summary: 'Download a file (envd GET /files)', querystring: Type.Object({ path: Type.Optional(Type.String({ maxLength: 4096 })), username: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: true }), response: { 200: Type.Any(), ...errors } }
  }, async (request, reply) => {
    if (forOther(request, ENVD_PORT)) return await proxy(request, reply)
    checkUser(request.query.username)
    const file = await envd.readFile(recordOf(request), request.query.path ?? '')
    reply.header('content-length', file.size).type('application/octet-stream')
    return reply.send(file.stream)
  })

  app.post('/files', {
    config,
    schema: { tags, summary: 'Upload files (envd POST /files): multipart parts named by their paths, or one octet-stream body at ?path', querystring: Type.Object({ path: Type.Optional(Type.String({ maxLength: 4096 })), username: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: true }), response: { 200: Type.Array(Type.Object({ name: Type.String(), type: Type.String(), path: Type.String() })), ...errors } }
  }, async (request, reply) => {
    if (forOther(request, ENVD_PORT)) return await proxy(request, reply)
    checkUser(request.query.username)
    const record = recordOf(request)
    const written = []
    const max = app.config.MAX_UPLOAD_BYTES
    if (request.isMultipart()) {
      for await (const part of request.parts()) {
        if (part.type !== 'file') continue
        const path = request.query.path ?? part.filename
        if (!path) throw new AppError(400, 'invalid_path', 'Each file part needs its path as its file name (or ?path=)')
        written.push(await envd.writeFile(record, path, part.file, max))
        if (part.file.truncated) throw new AppError(413, 'file_too_large', `Uploads are limited to ${max} bytes`)
      }
    } else {
      if (!request.query.path) throw new AppError(400, 'invalid_path', 'An octet-stream upload needs ?path=')
      if (header(request, 'content-encoding')) throw new AppError(415, 'unsupported_media_type', 'Compressed uploads (gzip) are not offered by this server')
      written.push(await envd.writeFile(record, request.query.path, (request.body ?? []) as Readable, max))
    }
    if (!written.length) throw new AppError(400, 'no_files', 'The upload held no file')
    return written
  })

  // The code interpreter (port 49999).
  const jsonBody = async <T>(request: FastifyRequest): Promise<T> => parseJson(await readBody(request)) as T

  app.post('/execute', { config, schema: { tags, summary: 'Run code (code interpreter): NDJSON lines of stdout, stderr, result, error, then number_of_executions', response: { 200: Type.Any(), ...errors } } }, async (request, reply) => {
    if (forOther(request, INTERPRETER_PORT)) return await proxy(request, reply)
    const body = await jsonBody<Record<string, unknown>>(request)
    if (typeof body?.code !== 'string') throw new AppError(400, 'validation_error', 'body/code must be a string')
    const req = {
      code: body.code,
      ...(typeof body.context_id === 'string' ? { context_id: body.context_id } : {}),
      ...(typeof body.language === 'string' ? { language: body.language } : {}),
      ...(body.env_vars && typeof body.env_vars === 'object' ? { env_vars: body.env_vars as Record<string, string> } : {})
    }
    let started = false
    const start = () => {
      if (started) return
      started = true
      reply.hijack()
      reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
    }
    try {
      await interpreter.execute(recordOf(request), req, (line) => { start(); reply.raw.write(JSON.stringify(line) + '\n') })
    } catch (err) {
      if (!started) throw err
      const e = toAppError(err as Error)
      logError(request, err, e)
      reply.raw.write(JSON.stringify({ type: 'error', name: e.code, value: e.message, traceback: '' }) + '\n')
    }
    start()
    reply.raw.end()
  })

  app.post('/contexts', { config, schema: { tags, summary: 'Create a code context (its own kernel): language, cwd', response: { 200: Type.Object({ id: Type.String(), language: Type.String(), cwd: Type.String() }), ...errors } } }, async (request, reply) => {
    if (forOther(request, INTERPRETER_PORT)) return await proxy(request, reply)
    const body = await jsonBody<{ language?: unknown, cwd?: unknown }>(request)
    return await interpreter.createContext(recordOf(request), {
      ...(typeof body?.language === 'string' ? { language: body.language } : {}),
      ...(typeof body?.cwd === 'string' ? { cwd: body.cwd } : {})
    })
  })

  app.get('/contexts', { config, schema: { tags, summary: 'The code contexts (and each language\'s default)', response: { 200: Type.Array(Type.Object({ id: Type.String(), language: Type.String(), cwd: Type.String() })), ...errors } } }, async (request, reply) => {
    if (forOther(request, INTERPRETER_PORT)) return await proxy(request, reply)
    return await interpreter.listContexts(recordOf(request))
  })

  const ContextId = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) })
  app.post('/contexts/:id/restart', { config, schema: { tags, summary: 'Restart a code context (its variables go)', params: ContextId, response: { 200: Type.Null(), ...errors } } }, async (request, reply) => {
    if (forOther(request, INTERPRETER_PORT)) return await proxy(request, reply)
    await interpreter.restartContext(recordOf(request), request.params.id)
    return reply.status(200).send(null)
  })

  app.delete('/contexts/:id', { config, schema: { tags, summary: 'Remove a code context', params: ContextId, response: { 200: Type.Null(), ...errors } } }, async (request, reply) => {
    if (forOther(request, INTERPRETER_PORT)) return await proxy(request, reply)
    await interpreter.removeContext(recordOf(request), request.params.id)
    return reply.status(200).send(null)
  })

  // Any other path: for an app's port, the app's; for envd and the interpreter, a 404 in their shape.
  app.all('/*', { config, schema: { hide: true } }, async (request, reply) => {
    if (portOf(request) !== ENVD_PORT && portOf(request) !== INTERPRETER_PORT) return await proxy(request, reply)
    return reply.status(404).send({ code: 404, message: `${request.method} ${request.url.split('?')[0]}: not part of the envd or code-interpreter API this server offers` })
  })
}

export default routes

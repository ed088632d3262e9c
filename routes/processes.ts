import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { StringDecoder } from 'node:string_decoder'
import { Type } from 'typebox'
import Value from 'typebox/value'
import type { SandboxRecord } from '../schemas/sandboxes.js'
import { ErrorSchema, IdParamsSchema, commonErrors } from '../schemas/common.js'
import {
  CommandResultSchema, CommandSchema, OutputQuerySchema, OutputSchema, PidParamsSchema, ProcessListSchema, ProcessSchema,
  ResizeSchema, SignalSchema, StdinSchema, TerminalQuerySchema, WatchQuerySchema, type ProcessView
} from '../schemas/workspace.js'
import { AppError } from '../services/errors.js'
import type { FollowEvent, ProcessInfo, Subscription } from '../services/sandbox/sandbox.js'
import { clientGone, errorBody, heartbeat, toAppError } from '../plugins/route-kit.js'
import { openSse, type SseStream } from './sse.js'
import { workspacePath } from './files.js'

const iso = (seconds: number) => new Date(seconds * 1000).toISOString()

export function processView (p: ProcessInfo): ProcessView {
  const { started_at: started, ended_at: ended, ...rest } = p
  return { ...rest, started_at: iso(started), ...(ended !== undefined ? { ended_at: iso(ended) } : {}) }
}

const wantsSse = (request: FastifyRequest) => (request.headers.accept ?? '').includes('text/event-stream')

/** Output events as the client reads them: text (each stream decoded as UTF-8 on its own) or base64. */
function outputCoder (encoding: 'utf8' | 'base64' = 'utf8') {
  const decoders = new Map<string, StringDecoder>()
  return (e: FollowEvent & { type: 'proc_output' }) => {
    if (encoding === 'base64') return { stream: e.stream, offset: e.offset, data: e.data }
    let decoder = decoders.get(e.stream)
    if (!decoder) decoders.set(e.stream, decoder = new StringDecoder('utf8'))
    return { stream: e.stream, offset: e.offset, text: decoder.write(Buffer.from(e.data, 'base64')) }
  }
}

const exitOf = (e: FollowEvent & { type: 'proc_exit' }) => ({
  pid: e.pid, exit_code: e.exit_code, signal: e.signal, status: e.status, duration_ms: e.duration_ms
})

/**
 * Commands, processes, terminals and watchers of a sandbox (issue 24): thin handlers over app.workspace. Streams are
 * SSE (resumable by byte offset: each output event's id is the offset after it) or WebSocket on the same URL.
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, workspace } = app
  const c = app.config
  const tags = ['processes']
  const errors = { 404: ErrorSchema, 409: ErrorSchema, 410: ErrorSchema, ...commonErrors }
  const record = async (request: FastifyRequest<{ Params: { id: string } }>) => await sandboxes.get(request.params.id, request.principal)

  /** Ends an SSE stream whose client reads slower than the stream writes: it resumes from its last offset. */
  const keepUp = async (sse: SseStream, sub: Subscription) => {
    if (sse.queued <= c.WS_MAX_BUFFERED_BYTES) return
    if (!await sse.drained(c.WS_SLOW_CLOSE_MS)) {
      sse.send('error', { error: { type: 'sandbox_error', code: 'slow_consumer', message: 'The client read too slowly; reconnect with the last event id to resume' } })
      sse.end()
      await sub.stop()
    }
  }

  const streamSse = (reply: FastifyReply, open: (send: (event: string, data: unknown, id?: string) => void) => Promise<Subscription>, kind: string) => {
    let sse: SseStream | null = null
    let sub: Subscription | null = null
    const buffered: Array<[string, unknown, string | undefined]> = []
    const send = (event: string, data: unknown, id?: string) => {
      if (!sse) return buffered.push([event, data, id])
      sse.send(event, data, id)
      if (sub) void keepUp(sse, sub)
    }
    return (async () => {
      sub = await open(send) // errors before the stream opens are ordinary JSON errors
      sse = openSse(reply)
      app.metrics.streamsOpen.inc({ kind })
      for (const [event, data, id] of buffered) sse.send(event, data, id)
      const beat = setInterval(() => sse!.comment('keep-alive'), 15_000)
      reply.raw.on('close', () => { void sub!.stop() })
      await sub.done.catch((err: Error) => send('error', errorBody(err)))
      clearInterval(beat)
      app.metrics.streamsOpen.dec({ kind })
      sse.end()
    })()
  }

  app.post('/:id/commands', {
    preHandler: app.limitPerTarget,
    schema: {
      tags,
      summary: 'Run a command: to its end (200, with its output and exit; SSE with Accept: text/event-stream), or in the background (201, the process)',
      params: IdParamsSchema,
      body: CommandSchema,
      response: { 200: CommandResultSchema, 201: ProcessSchema, 413: ErrorSchema, ...errors }
    }
  }, async (request, reply) => {
    const body = request.body
    const sandbox = await record(request)
    const spec = {
      cmd: body.cmd,
      ...(body.cwd ? { cwd: body.cwd } : {}),
      ...(body.env ? { env: body.env } : {}),
      ...(body.tag ? { tag: body.tag } : {})
    }
    if (body.pty && !body.background) throw new AppError(400, 'validation_error', 'body/pty: a terminal is for background commands (background: true); POST /commands waits for a command whose input is given')
    if (body.background) {
      const started = await workspace.spawn(sandbox, { ...spec, timeout_ms: body.timeout_ms ?? 0, stdin: body.stdin === true, ...(body.pty ? { pty: body.pty } : {}) })
      return reply.status(201).send(processView(started))
    }
    const timeout = sandboxes.timeoutFor(body.timeout_ms || undefined)
    const run = { ...spec, timeout_ms: timeout, ...(body.input !== undefined ? { input: Buffer.from(body.input) } : {}) }
    if (!wantsSse(request)) {
      return await workspace.run(sandbox, run, undefined, clientGone(reply))
    }
    const coder = outputCoder()
    const abort = new AbortController()
    let sse: SseStream | null = null
    const events: FollowEvent[] = []
    const send = (e: FollowEvent) => {
      if (!sse) { events.push(e); return }
      if (e.type === 'proc_follow') sse.send('start', { pid: e.pid })
      else if (e.type === 'proc_output') { const chunk = coder(e); sse.send(chunk.stream === 'stderr' ? 'stderr' : 'stdout', chunk, String(e.offset + Buffer.from(e.data, 'base64').length)) }
    }
    const result = workspace.run(sandbox, run, send, abort.signal)
    sse = openSse(reply)
    reply.raw.on('close', () => abort.abort())
    for (const e of events.splice(0)) send(e)
    try {
      const done = await result
      sse.send('exit', { pid: done.pid, exit_code: done.exit_code, signal: done.signal, status: done.status, duration_ms: done.duration_ms, truncated: done.truncated })
    } catch (err) {
      sse.send('error', errorBody(err))
    }
    sse.end()
    return reply
  })

  app.get('/:id/processes', {
    schema: { tags, summary: 'The sandbox\'s processes: running, and the last 64 finished', params: IdParamsSchema, response: { 200: ProcessListSchema, ...errors } }
  }, async (request) => ({ object: 'list' as const, data: (await workspace.processes(await record(request))).map(processView) }))

  app.get('/:id/processes/:pid', {
    schema: { tags, summary: 'One process', params: PidParamsSchema, response: { 200: ProcessSchema, ...errors } }
  }, async (request) => processView(await workspace.process(await record(request), request.params.pid)))

  app.route({
    method: 'GET',
    url: '/:id/processes/:pid/output',
    schema: {
      tags,
      summary: 'A process\'s output: what is kept (JSON), or followed live (SSE with Accept: text/event-stream or follow=true: events output, then exit; resume with Last-Event-ID). The same URL upgrades to a WebSocket (JSON messages output and exit; send input, signal and resize)',
      params: PidParamsSchema,
      querystring: OutputQuerySchema,
      response: { 200: OutputSchema, ...errors }
    },
    wsHandler: (socket: WebSocket, request) => { void processSocket(socket, request as unknown as FastifyRequest<{ Params: { id: string, pid: number }, Querystring: { offset?: number, tail?: number, encoding?: 'utf8' | 'base64' } }>, false) },
    handler: async (request, reply) => {
      const { pid } = request.params
      const q = request.query
      const sandbox = await record(request)
      const lastId = Number(request.headers['last-event-id'])
      const from = q.tail !== undefined ? { tail: q.tail } : { offset: Number.isSafeInteger(lastId) && lastId >= 0 ? lastId : q.offset ?? 0 }
      const coder = outputCoder(q.encoding)
      if (q.follow ?? wantsSse(request)) {
        await streamSse(reply, send => workspace.follow(sandbox, pid, from, (e) => {
          if (e.type === 'proc_output') send('output', coder(e), String(e.offset + Buffer.from(e.data, 'base64').length))
          else if (e.type === 'proc_exit') send('exit', exitOf(e))
          else if (e.type === 'proc_follow') send('follow', { pid: e.pid, offset: e.offset, end: e.end, pty: e.pty })
        }), 'output')
        return reply
      }
      const kept = await workspace.kept(sandbox, pid, from)
      return { pid, offset: kept.offset, end: kept.end, output: kept.output.map(coder), process: processView(await workspace.process(sandbox, pid)) }
    }
  })

  app.post('/:id/processes/:pid/stdin', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Write to a process\'s stdin (and with eof close it): 409 when it has exited or has no stdin', params: PidParamsSchema, body: StdinSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    const { data, encoding, eof } = request.body
    await workspace.input(await record(request), request.params.pid, Buffer.from(data, encoding === 'base64' ? 'base64' : 'utf8'), eof === true)
    return reply.status(204).send(null)
  })

  app.post('/:id/processes/:pid/signal', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Send a signal to a process (and its process group): 409 when it has exited', params: PidParamsSchema, body: SignalSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await workspace.signal(await record(request), request.params.pid, request.body.signal)
    return reply.status(204).send(null)
  })

  app.post('/:id/processes/:pid/resize', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Resize a terminal: 409 when the process has none', params: PidParamsSchema, body: ResizeSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await workspace.resize(await record(request), request.params.pid, request.body.cols, request.body.rows)
    return reply.status(204).send(null)
  })

  app.route({
    method: 'GET',
    url: '/:id/pty',
    preHandler: app.sockets.check,
    schema: { tags, summary: 'A terminal over a WebSocket (see the README\'s protocol section): binary frames are raw bytes both ways; text frames are JSON (resize, input, signal); ?pid= reattaches with the recent screen replayed. Messages: docs/api.md, "Terminals". A plain GET is 426', params: IdParamsSchema, querystring: TerminalQuerySchema, response: { 404: ErrorSchema, 426: ErrorSchema, ...commonErrors } },
    wsHandler: (socket: WebSocket, request) => { void processSocket(socket, request as unknown as FastifyRequest<{ Params: { id: string, pid?: number }, Querystring: Record<string, unknown> }>, true) },
    handler: async () => {
      throw new AppError(426, 'upgrade_required', 'This route is a WebSocket: connect with Upgrade: websocket', 'invalid_request_error')
    }
  })

  /**
   * One WebSocket attached to a process: a new terminal (/pty), a terminal again (/pty?pid=), or any process's
   * output (/processes/:pid/output). Output leaves as binary frames (terminals) or JSON messages; input, resize and
   * signal come in. A slow reader is closed (it reattaches); a silent peer is dropped by the heartbeat.
   */
  async function processSocket (socket: WebSocket, request: FastifyRequest<{ Params: { id: string, pid?: number }, Querystring: Record<string, unknown> }>, terminal: boolean): Promise<void> {
    app.sockets.hold(request.principal, socket)
    heartbeat(socket, c.WS_PING_INTERVAL_MS)
    const sendJson = (message: unknown) => { if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message)) }
    const fail = (err: unknown, close = true) => {
      const e = toAppError(err as Error)
      sendJson({ type: 'error', ...errorBody(e) })
      if (close) socket.close(e.statusCode >= 500 ? 1011 : 4000 + Math.min(e.statusCode, 999), e.code.slice(0, 100))
    }
    let sub: Subscription | null = null
    // Listening from the first moment: a client types as soon as the socket opens, before the terminal exists; its
    // messages wait, in order, until it does.
    let attach!: (target: { sandbox: SandboxRecord, pid: number } | null) => void
    const attached = new Promise<{ sandbox: SandboxRecord, pid: number } | null>(resolve => { attach = resolve })
    let queue = Promise.resolve()
    socket.on('message', (data: RawData, isBinary: boolean) => {
      queue = queue.then(async () => {
        const target = await attached
        if (!target) return
        const { sandbox, pid } = target
        const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
        if (isBinary) return await workspace.input(sandbox, pid, bytes)
        let message: { type?: string, data?: string, cols?: number, rows?: number, signal?: string, eof?: boolean }
        try {
          message = JSON.parse(bytes.toString()) as typeof message
        } catch {
          return fail(new AppError(400, 'invalid_message', 'text frames are JSON messages: input, resize, signal'), false)
        }
        if (message.type === 'input' && typeof message.data === 'string') await workspace.input(sandbox, pid, Buffer.from(message.data), message.eof === true)
        else if (message.type === 'resize' && Number.isInteger(message.cols) && Number.isInteger(message.rows)) await workspace.resize(sandbox, pid, message.cols!, message.rows!)
        else if (message.type === 'signal' && typeof message.signal === 'string') await workspace.signal(sandbox, pid, message.signal)
        else if (message.type !== 'ping') fail(new AppError(400, 'invalid_message', 'message type must be one of input {data}, resize {cols, rows}, signal {signal}'), false)
      }).catch(err => fail(err, false))
    })
    socket.on('close', () => {
      app.metrics.streamsOpen.dec({ kind: terminal ? 'terminal' : 'output' })
      void sub?.stop()
    })
    app.metrics.streamsOpen.inc({ kind: terminal ? 'terminal' : 'output' })
    try {
      const sandbox = await sandboxes.get(request.params.id, request.principal)
      const raw = request.query
      const query = terminal ? Value.Parse(TerminalQuerySchema, Value.Convert(TerminalQuerySchema, { ...raw })) : raw
      let pid = Number(request.params.pid ?? (query as { pid?: number }).pid)
      if (terminal && !Number.isInteger(pid)) {
        const q = query as { cmd?: string, cwd?: string, cols: number, rows: number }
        pid = await workspace.terminal(sandbox, { ...(q.cmd ? { cmd: q.cmd.split(' ').filter(Boolean) } : {}), ...(q.cwd ? { cwd: q.cwd } : {}), cols: q.cols, rows: q.rows })
      }
      const coder = outputCoder((raw.encoding as 'utf8' | 'base64' | undefined) ?? 'utf8')
      attach({ sandbox, pid })
      const from = raw.tail !== undefined ? { tail: Number(raw.tail) } : { offset: Number(raw.offset ?? 0) || 0 }
      const onEvent = (e: FollowEvent) => {
        if (e.type === 'proc_follow') sendJson({ type: 'ready', pid: e.pid, offset: e.offset, pty: e.pty })
        else if (e.type === 'proc_output') {
          if (socket.readyState !== socket.OPEN) return
          if (terminal) socket.send(Buffer.from(e.data, 'base64'))
          else sendJson({ type: 'output', ...coder(e) })
          if (socket.bufferedAmount > c.WS_MAX_BUFFERED_BYTES) socket.close(1013, 'slow consumer: reconnect to resume')
        } else if (e.type === 'proc_exit') {
          sendJson({ type: 'exit', ...exitOf(e) })
          socket.close(1000, 'exited')
        }
      }
      // A terminal replays its recent screen (the service's policy); any other process's output from where asked.
      sub = terminal ? await workspace.attach(sandbox, pid, onEvent) : await workspace.follow(sandbox, pid, from, onEvent)
      if (socket.readyState !== socket.OPEN) await sub.stop()
      await sub.done
    } catch (err) {
      attach(null)
      fail(err)
    }
  }

  app.route({
    method: 'GET',
    url: '/:id/watch',
    schema: {
      tags,
      summary: 'Watch a workspace directory: SSE events (create, write, remove, rename, chmod) with Accept: text/event-stream, or the same as WebSocket messages on this URL; 429 past SANDBOX_MAX_WATCHERS',
      params: IdParamsSchema,
      querystring: WatchQuerySchema,
      response: { 200: Type.String({ description: 'text/event-stream: watching, then create, write, remove, rename, chmod, overflow' }), ...errors }
    },
    wsHandler: (socket: WebSocket, request) => { void watchSocket(socket, request as unknown as FastifyRequest<{ Params: { id: string }, Querystring: { path: string, recursive: boolean } }>) },
    handler: async (request, reply) => {
      const path = workspacePath(request.query.path)
      const sandbox = await record(request)
      await streamSse(reply, send => workspace.watch(sandbox, path, request.query.recursive, (e) => {
        if (e.type === 'fs_event') send(e.kind, { path: e.path, is_dir: e.is_dir })
        else send('watching', { path: e.path })
      }), 'watch')
      return reply
    }
  })

  async function watchSocket (socket: WebSocket, request: FastifyRequest<{ Params: { id: string }, Querystring: { path: string, recursive: boolean } }>): Promise<void> {
    app.sockets.hold(request.principal, socket)
    heartbeat(socket, c.WS_PING_INTERVAL_MS)
    let sub: Subscription | null = null
    socket.on('close', () => { void sub?.stop() })
    try {
      const q = Value.Parse(WatchQuerySchema, Value.Convert(WatchQuerySchema, { ...request.query }))
      const sandbox = await sandboxes.get(request.params.id, request.principal)
      sub = await workspace.watch(sandbox, workspacePath(q.path), q.recursive, (e) => {
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(e.type === 'fs_event' ? { type: e.kind, path: e.path, is_dir: e.is_dir } : { type: 'watching', path: e.path }))
      })
      if (socket.readyState !== socket.OPEN) await sub.stop()
      await sub.done
      socket.close(1000, 'watch ended')
    } catch (err) {
      const e = toAppError(err as Error)
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify({ type: 'error', ...errorBody(e) }))
      socket.close(e.statusCode >= 500 ? 1011 : 4000 + Math.min(e.statusCode, 999), e.code.slice(0, 100))
    }
  }
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, IdParamsSchema, commonErrors } from '../schemas/common.js'
import { CreateSandboxSchema, CreateSnapshotSchema, ExecuteSchema, ExecutionSchema, ForkResultSchema, ForkSchema, SandboxListSchema, SandboxSchema, SnapshotSchema, UpdateSandboxSchema } from '../schemas/sandboxes.js'
import type { ExecutionEvent } from '../schemas/sandboxes.js'
import { openSse, type SseStream } from './sse.js'
import { AppError, SandboxesDisabled } from '../services/errors.js'
import fileRoutes from './files.js'
import { clientGone, toAppError } from '../plugins/route-kit.js'
import { snapshotView } from './snapshots.js'

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes } = app
  const tags = ['sandboxes']
  const errors = { 404: ErrorSchema, 409: ErrorSchema, 410: ErrorSchema, 413: ErrorSchema, ...commonErrors }
  const enabled = async () => {
    if (!app.config.SANDBOX_ENABLED) throw SandboxesDisabled()
  }

  app.post('', {
    preHandler: enabled,
    schema: {
      tags,
      summary: 'Create a sandbox (from the warm pool)',
      description: 'Answers 503 capacity_exhausted with Retry-After when the host is full or its container starts cannot serve the request within SANDBOX_QUEUE_TIMEOUT_MS.',
      body: CreateSandboxSchema,
      response: { 201: SandboxSchema, 403: ErrorSchema, ...errors }
    }
  }, async (request, reply) => {
    const record = await sandboxes.create(request.principal, request.body, null, clientGone(reply))
    return reply.status(201).send(sandboxes.view(record))
  })

  app.get('', {
    schema: { tags, summary: "List this key's sandboxes (every key's with all=true, admin keys only), newest first", querystring: Type.Object({ all: Type.Boolean({ default: false }) }), response: { 200: SandboxListSchema, 403: ErrorSchema, ...commonErrors } }
  }, async (request) => {
    if (request.query.all && request.principal.role !== 'admin') throw new AppError(403, 'admin_required', 'Listing every key\'s sandboxes needs an admin key')
    return { object: 'list' as const, data: (await sandboxes.list(request.principal, request.query.all)).map(r => sandboxes.view(r)) }
  })

  app.get('/:id', {
    schema: { tags, summary: 'Get a sandbox', params: IdParamsSchema, response: { 200: SandboxSchema, ...errors } }
  }, async (request) => sandboxes.view(await sandboxes.get(request.params.id, request.principal)))

  app.patch('/:id', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Change a sandbox: its idle timeout, counted from now (extend it, or shorten it), what it becomes once idle (on_timeout), and its network policy (live)', params: IdParamsSchema, body: UpdateSandboxSchema, response: { 200: SandboxSchema, 403: ErrorSchema, ...errors } }
  }, async (request) => {
    const { network, ...change } = request.body
    sandboxes.checkUpdate(change) // all of it is checked before any of it is applied
    let record = await sandboxes.get(request.params.id, request.principal)
    if (network !== undefined) record = await sandboxes.setNetwork(record, request.principal, network)
    if (Object.keys(change).length) record = await sandboxes.update(record, change)
    return sandboxes.view(record)
  })

  app.post('/:id/pause', {
    preHandler: app.limitPerTarget,
    schema: {
      tags,
      summary: 'Pause a sandbox: it holds no memory or CPU until its next use (or resume)',
      description: 'Where the Docker host can checkpoint (GET /v1/ready: hosts[].pause_mode), its memory and processes are kept; elsewhere its workspace files only. Pausing a paused sandbox changes nothing. 409 sandbox_busy while it runs code; 409 pause_failed when the checkpoint fails (it keeps running).',
      params: IdParamsSchema,
      response: { 200: SandboxSchema, ...errors }
    }
  }, async (request) => sandboxes.view(await sandboxes.pause(await sandboxes.get(request.params.id, request.principal))))

  app.post('/:id/resume', {
    preHandler: [enabled, app.limitPerTarget],
    schema: {
      tags,
      summary: 'Resume a paused sandbox (any use of it does so too)',
      description: 'state_lost: true when the pause kept only the files (its kernels start afresh). A sandbox that is not paused is answered as it is. 503 capacity_exhausted when its host is full; 410 sandbox_lost when it was removed or its checkpoint cannot be restored.',
      params: IdParamsSchema,
      response: { 200: SandboxSchema, ...errors }
    }
  }, async (request) => {
    const { record, stateLost } = await sandboxes.resume(await sandboxes.get(request.params.id, request.principal, true))
    return { ...sandboxes.view(record), state_lost: stateLost }
  })

  app.delete('/:id', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Delete a sandbox and its container', params: IdParamsSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await sandboxes.destroy(await sandboxes.get(request.params.id, request.principal))
    return reply.status(204).send(null)
  })

  app.post('/:id/execute', {
    config: { accessLog: 'debug' },
    preHandler: [enabled, app.limitPerTarget],
    bodyLimit: Math.max(app.config.BODY_LIMIT, app.config.MAX_CODE_SIZE * 6 + 65536),
    schema: {
      tags,
      summary: 'Run code; the whole Execution as JSON, or its events as SSE with stream: true',
      description: 'SSE events: start, stdout, stderr, result, display, error, end; each `data` is the event as JSON.',
      params: IdParamsSchema,
      body: ExecuteSchema,
      response: { 200: ExecutionSchema, ...errors }
    }
  }, async (request, reply) => {
    const record = await sandboxes.get(request.params.id, request.principal)
    let sse: SseStream | null = null
    let seq = 0
    // The stream opens with the first event, so errors found before the code starts are plain JSON errors.
    const onEvent = request.body.stream
      ? (event: ExecutionEvent) => { sse ??= openSse(reply); sse.send(event.type, event, String(++seq)) }
      : undefined
    try {
      const execution = await sandboxes.execute(record, request.body, onEvent, { via: 'rest' })
      if (!sse) return execution
    } catch (err) {
      if (!sse) throw err
      if (!(err instanceof AppError)) request.log.error({ err }, 'execution failed mid-stream')
      const e = err instanceof AppError ? err : new AppError(410, 'sandbox_lost', 'The sandbox stopped during the execution', 'sandbox_error')
      ;(sse as SseStream).send('error', { error: { message: e.message, type: e.type, code: e.code, ...e.extra } })
    }
    ;(sse as SseStream).end()
    return reply
  })

  app.post('/:id/interrupt', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Interrupt the running execution (state is kept when the code stops)', params: IdParamsSchema, response: { 200: Type.Object({ interrupted: Type.Boolean() }), ...errors } }
  }, async (request) => {
    const record = await sandboxes.get(request.params.id, request.principal)
    return { interrupted: await (await sandboxes.handle(record)).interrupt() }
  })

  app.post('/:id/snapshots', {
    preHandler: [enabled, app.limitPerTarget],
    schema: {
      tags,
      summary: "Keep the sandbox's workspace as a named snapshot of the key (it outlives the sandbox)",
      description: 'POST /v1/sandboxes {snapshot: name} starts a sandbox from it. A snapshot keeps the files; the new sandbox\'s kernels start afresh. 409 snapshot_exists, 409 sandbox_busy while it runs code, 429 snapshot_limit_reached (SANDBOX_MAX_SNAPSHOTS_PER_KEY).',
      params: IdParamsSchema,
      body: CreateSnapshotSchema,
      response: { 201: SnapshotSchema, ...errors }
    }
  }, async (request, reply) => {
    const snapshot = await app.snapshots.take(await sandboxes.get(request.params.id, request.principal), request.body.name)
    return reply.status(201).send(snapshotView(snapshot))
  })

  app.post('/:id/fork', {
    preHandler: [enabled, app.limitPerTarget],
    schema: {
      tags,
      summary: 'Make `count` new sandboxes with this one\'s workspace, from one copy of it',
      description: 'Each entry of the answer is a sandbox, or the error that kept it from being made (the key\'s limit: 429 sandbox_limit_reached; the host: 503 capacity_exhausted). The copies have the source\'s language, resources, timeout and network policy; their kernels start afresh. 400 when count is over SANDBOX_MAX_FORK.',
      params: IdParamsSchema,
      body: ForkSchema,
      response: { 200: ForkResultSchema, ...errors }
    }
  }, async (request) => {
    const results = await app.snapshots.fork(await sandboxes.get(request.params.id, request.principal), request.body.count, request.principal)
    return {
      object: 'list' as const,
      data: results.map(r => {
        if ('record' in r) return { sandbox: sandboxes.view(r.record) }
        const e = toAppError(r.error as Error)
        if (e.statusCode >= 500 && e.code === 'internal_error') request.log.error({ err: r.error }, 'a fork could not be made')
        return { error: { message: e.message, type: e.type, code: e.code } }
      })
    }
  })

  await app.register(fileRoutes)
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyError } from 'fastify'
import multipart from '@fastify/multipart'
import { Type } from 'typebox'
import { LibreChatService, fileId, pathOfId, safeName } from '../../services/librechat/index.js'
import { AppError } from '../../services/errors.js'
import { clientGone, protocolErrors } from '../../plugins/route-kit.js'

/** The multipart parser's complaints (busboy's plain errors, @fastify/multipart's limits) as the client's 4xx. */
function multipartError (err: FastifyError): AppError | null {
  if (err instanceof AppError) return null
  if (err.code === 'FST_FILES_LIMIT' || err.code === 'FST_FIELDS_LIMIT' || err.code === 'FST_PARTS_LIMIT') return new AppError(413, 'too_many_parts', err.message)
  if (err.code === 'FST_INVALID_MULTIPART_CONTENT_TYPE' || err.code === 'FST_PROTO_VIOLATION') return new AppError(400, 'invalid_multipart', err.message)
  if (!err.statusCode && /multipart|boundary|end of form|part header|malformed/i.test(err.message)) return new AppError(400, 'invalid_multipart', `The multipart body is malformed: ${err.message}`)
  return null
}

const ErrorBody = Type.Object({ error: Type.String(), code: Type.String(), retry_after_seconds: Type.Optional(Type.Number()) }, { description: "LibreChat's error shape: `error` is shown to the model" })
const FileRefSchema = Type.Object({ id: Type.String(), name: Type.String(), path: Type.String(), session_id: Type.String(), storage_session_id: Type.String() })
const InputFileSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 2048 }),
  name: Type.String({ minLength: 1, maxLength: 1024 }),
  session_id: Type.Optional(Type.String({ maxLength: 64 })),
  storage_session_id: Type.Optional(Type.String({ maxLength: 64 }))
})
// Clients put more in the body than they need (user_id, entity_id, runtime_session_hint, their own options): allowed.
const ExecSchema = Type.Object({
  lang: Type.String({ minLength: 1, maxLength: 32 }),
  code: Type.String(),
  args: Type.Optional(Type.Array(Type.String({ maxLength: 4096 }), { maxItems: 256 })),
  session_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  files: Type.Optional(Type.Array(InputFileSchema, { maxItems: 200 })),
  runtime_session_hint: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'the conversation\'s warm workspace (stateful_code_sessions): every exec with this hint runs in one sandbox that keeps its files' }))
})
const ExecResultSchema = Type.Object({
  session_id: Type.String(),
  stdout: Type.String(),
  stderr: Type.String(),
  code: Type.Integer({ description: 'the exit code' }),
  files: Type.Array(FileRefSchema),
  deleted_files: Type.Optional(Type.Array(Type.String(), { description: 'files of the workspace the run removed (names as in files)' })),
  runtime_session_id: Type.Optional(Type.String({ description: 'the warm workspace a runtime_session_hint named (a digest of key and hint)' })),
  runtime_status: Type.Optional(Type.Union([Type.Literal('new'), Type.Literal('reused')]))
})
const SessionParams = Type.Object({ session_id: Type.String({ minLength: 1, maxLength: 64 }) })
const FileParams = Type.Object({ session_id: Type.String({ minLength: 1, maxLength: 64 }), file_id: Type.String({ minLength: 1, maxLength: 2048 }) })

const MIME: Record<string, string> = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', svg: 'image/svg+xml', csv: 'text/csv', txt: 'text/plain', json: 'application/json', html: 'text/html', pdf: 'application/pdf', md: 'text/markdown' }
const mimeOf = (name: string) => MIME[name.split('.').pop()?.toLowerCase() ?? ''] ?? 'application/octet-stream'

/**
 * LibreChat's Code Interpreter API (set LIBRECHAT_CODE_BASEURL to http://host:8000/librechat/v1): exec, upload,
 * download, file listings and the freshness probe, over our sandboxes, keys and limits.
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const service = new LibreChatService(app.sandboxes, { maxFileBytes: app.config.MAX_UPLOAD_BYTES }, app.contexts)
  const tags = ['librechat']
  const config = { apiKeyHeader: true }
  const errors = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 413: ErrorBody, 429: ErrorBody, 503: ErrorBody, 507: ErrorBody }
  // preservePath: LibreChat sends nested names (a/b.csv); they are checked, not stripped.
  await app.register(multipart, { preservePath: true, limits: { fileSize: app.config.MAX_UPLOAD_BYTES, files: 200, fields: 50 } })

  // LibreChat shows `error` to the model and reads 429s as {error: 'rate_limited', retry_after_seconds}.
  app.setErrorHandler(protocolErrors((e) => {
    const retry = e.extra.retry_after
    return e.statusCode === 429
      ? { error: 'rate_limited', code: e.code, retry_after_seconds: retry as number }
      : { error: e.message, code: e.code, ...(typeof retry === 'number' ? { retry_after_seconds: retry } : {}) }
  }, (err: FastifyError) => err.code === 'FST_REQ_FILE_TOO_LARGE'
    ? new AppError(413, 'file_too_large', `File size limit exceeded (${app.config.MAX_UPLOAD_BYTES} bytes)`)
    : multipartError(err)))

  app.post('/exec', {
    config,
    schema: {
      tags,
      summary: 'Run code as a fresh process in the session\'s sandbox (LibreChat `execute_code`)',
      description: `Languages (and LibreChat's names for them): ${app.sandboxes.languages().map(l => [l.id, ...l.aliases].join('|')).join(', ')}. Without session_id a new session is made. Input files are copied into /mnt/data first; files the run writes or changes under /mnt/data come back as refs. A failing program is a 200 with its stderr and exit code.`,
      body: ExecSchema,
      response: { 200: ExecResultSchema, ...errors }
    }
  }, async (request, reply) => {
    return await service.exec(request.principal, request.body, clientGone(reply))
  })

  // LibreChat's expected execution profile: this server offers both of its profiles ('default': a fresh sandbox per
  // session; 'stateful': warm per-conversation workspaces); anything else is the capability error it explains.
  app.addHook('preHandler', async (request) => {
    const expected = request.headers['x-codeapi-expected-profile']
    if (expected !== undefined && expected !== 'default' && expected !== 'stateful') {
      throw new AppError(409, 'execution_profile_mismatch', `This server offers the execution profiles default and stateful, not ${String(expected).slice(0, 64)}`)
    }
  })

  const ProgrammaticSchema = Type.Object({
    ...ExecSchema.properties,
    tools: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 200, description: 'tools the code may call back: must be empty (not offered here)' })),
    continuation_token: Type.Optional(Type.String({ maxLength: 4096 })),
    workspace_instance_id: Type.Optional(Type.String({ maxLength: 64 }))
  })
  app.post('/exec/programmatic', {
    config,
    schema: {
      tags,
      summary: 'Run code in one round (LibreChat\'s bash tool with an attached workspace: X-LibreChat-Code-Workspace-ID names a persistent project root)',
      description: 'As /exec, answered as {status: "completed", ...}. With X-LibreChat-Code-Workspace-ID the run happens in that workspace of the key (and workspace_instance_id), kept between calls; X-LibreChat-Code-Request-ID names it for exec/programmatic/cancel. Code that calls tools back is not offered: a non-empty tools list is a 400 unsupported_capability.',
      body: ProgrammaticSchema,
      response: { 200: Type.Object({ status: Type.Literal('completed'), ...ExecResultSchema.properties }), ...errors }
    }
  }, async (request, reply) => {
    const workspace = request.headers['x-librechat-code-workspace-id']
    const requestId = request.headers['x-librechat-code-request-id']
    return await service.programmatic(request.principal, request.body, {
      ...(typeof workspace === 'string' ? { workspace: workspace.trim() } : {}),
      ...(typeof requestId === 'string' && requestId.length <= 128 ? { requestId } : {})
    }, clientGone(reply))
  })
  app.post('/exec/programmatic/cancel', {
    config,
    schema: { tags, summary: 'Interrupt the programmatic execution of a request id (its X-LibreChat-Code-Request-ID)', body: Type.Object({ request_id: Type.String({ minLength: 1, maxLength: 128 }) }), response: { 200: Type.Object({ cancelled: Type.Boolean() }), ...errors } }
  }, async (request) => await service.cancel(request.principal, request.body.request_id))

  app.post('/upload', {
    config,
    schema: { tags, summary: 'Upload files (multipart, field `file`, repeatable) into a new session', consumes: ['multipart/form-data'], response: { 200: Type.Object({ message: Type.Literal('success'), session_id: Type.String(), storage_session_id: Type.String(), files: Type.Array(Type.Object({ fileId: Type.String(), filename: Type.String() })) }), ...errors } }
  }, async (request) => {
    if (!request.isMultipart()) throw new AppError(400, 'not_multipart', 'Send multipart/form-data with a `file` field')
    const { record, handle } = await service.newSession(request.principal)
    const files: Array<{ fileId: string, filename: string }> = []
    try {
      for await (const part of request.files()) {
        const name = safeName(part.filename)
        await handle.writeFile(name, part.file, app.config.MAX_UPLOAD_BYTES)
        if (part.file.truncated) throw new AppError(413, 'file_too_large', `File size limit exceeded (${app.config.MAX_UPLOAD_BYTES} bytes)`)
        files.push({ fileId: fileId(name), filename: name })
      }
    } catch (err) {
      await app.sandboxes.destroy(record).catch(() => {}) // nothing half-uploaded stays behind
      throw err
    }
    if (!files.length) {
      await app.sandboxes.destroy(record).catch(() => {})
      throw new AppError(400, 'no_file', 'The upload has no `file` part')
    }
    return { message: 'success' as const, session_id: record.id, storage_session_id: record.id, files }
  })

  app.get('/download/:session_id/:file_id', {
    config,
    schema: { tags, summary: 'A file of a session, as bytes', params: FileParams, response: { 200: Type.Any({ description: 'the file bytes' }), ...errors } }
  }, async (request, reply) => {
    const { handle } = await service.session(request.principal, request.params.session_id)
    const path = pathOfId(request.params.file_id)
    const { size, stream } = await handle.readFile(path)
    const name = path.split('/').pop()!
    return reply.header('content-type', mimeOf(name)).header('content-length', size)
      .header('content-disposition', `attachment; filename="${name.replace(/[^\x20-\x7e]|"/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`)
      .send(stream)
  })

  app.get('/files/:session_id', {
    config,
    schema: {
      tags,
      summary: "A session's files",
      params: SessionParams,
      querystring: Type.Object({ detail: Type.Union([Type.Literal('simple'), Type.Literal('summary'), Type.Literal('full'), Type.Literal('normalized')], { default: 'simple' }) }, { additionalProperties: true }),
      response: { 200: Type.Array(Type.Unknown()), ...errors }
    }
  }, async (request) => {
    const { record, handle } = await service.session(request.principal, request.params.session_id)
    const files = await service.snapshot(handle)
    const entries = [...files.keys()].map(async (path) => ({ path, entry: await service.stat(handle, path) }))
    const stats = await Promise.all(entries)
    switch (request.query.detail) {
      case 'simple': return stats.map(({ path }) => `${record.id}/${fileId(path)}`)
      case 'summary': return stats.map(({ path, entry }) => ({ name: `${record.id}/${fileId(path)}`, size: entry.size, lastModified: new Date(entry.modified * 1000).toISOString(), etag: `${entry.size}-${entry.modified}` }))
      default: return stats.map(({ path, entry }) => ({
        id: fileId(path),
        name: path,
        storage_session_id: record.id,
        session_id: record.id,
        size: entry.size,
        lastModified: new Date(entry.modified * 1000).toISOString(),
        etag: `${entry.size}-${entry.modified}`,
        contentType: mimeOf(path),
        metadata: { 'content-type': mimeOf(path), 'original-filename': path.split('/').pop() }
      }))
    }
  })

  app.get('/sessions/:session_id/objects/:file_id', {
    config,
    schema: { tags, summary: "One file's metadata (LibreChat's freshness probe)", params: FileParams, response: { 200: Type.Object({ id: Type.String(), name: Type.String(), size: Type.Integer(), lastModified: Type.String(), etag: Type.String(), contentType: Type.String() }), ...errors } }
  }, async (request) => {
    const { handle } = await service.session(request.principal, request.params.session_id)
    const path = pathOfId(request.params.file_id)
    const entry = await service.stat(handle, path)
    return { id: request.params.file_id, name: path, size: entry.size, lastModified: new Date(entry.modified * 1000).toISOString(), etag: `${entry.size}-${entry.modified}`, contentType: mimeOf(path) }
  })

  app.delete('/files/:session_id/:file_id', {
    config,
    schema: { tags, summary: 'Delete a file of a session', params: FileParams, response: { 200: Type.Object({ message: Type.String() }), ...errors } }
  }, async (request) => {
    const { handle } = await service.session(request.principal, request.params.session_id)
    await handle.deleteFile(pathOfId(request.params.file_id))
    return { message: 'deleted' }
  })

  app.get('/health', { config: { public: true, rateLimit: false, accessLog: 'debug' }, schema: { tags, summary: 'Liveness', security: [], response: { 200: Type.Object({ status: Type.Literal('ok') }) } } }, async () => ({ status: 'ok' as const }))
}

export default routes

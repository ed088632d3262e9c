import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyError, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify'
import multipart from '@fastify/multipart'
import type { RawData, WebSocket } from 'ws'
import { Type, type TSchema } from 'typebox'
import { OpenTerminal, scopeOf, type TerminalScope } from '../../services/terminal/index.js'
import { HOME } from '../../services/sandbox/workspace.js'
import { AppError } from '../../services/errors.js'
import type { Principal } from '../../services/auth.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { clientGone, heartbeat, protocolErrors, toAppError } from '../../plugins/route-kit.js'
import { proxyToPort } from '../ports.js'
import type { Subscription } from '../../services/sandbox/sandbox.js'

/** Open Terminal's error body (FastAPI's HTTPException): `detail` is what its clients show. */
const Detail = Type.Object({ detail: Type.String() }, { description: 'Open Terminal\'s error shape' })
const errors = { 400: Detail, 401: Detail, 403: Detail, 404: Detail, 409: Detail, 413: Detail, 415: Detail, 429: Detail, 503: Detail, 504: Detail }
// Bodies tolerate what clients add (Open WebUI repeats query arguments in the body).
const loose = { additionalProperties: true }
const PathText = Type.String({ maxLength: 4096 })
const Entry = Type.Object({ type: Type.String({ description: 'stdout, stderr, or output (a terminal)' }), data: Type.String() })
const ProcessView = Type.Object({
  id: Type.String(),
  command: Type.String(),
  status: Type.String({ description: 'running, done or killed' }),
  exit_code: Type.Union([Type.Integer(), Type.Null()]),
  output: Type.Optional(Type.Array(Entry)),
  truncated: Type.Optional(Type.Boolean()),
  next_offset: Type.Optional(Type.Integer({ description: 'pass as offset to get only newer output' })),
  log_path: Type.Union([Type.String(), Type.Null()])
})
const Wait = Type.Optional(Type.Number({ minimum: 0, maximum: 300, description: 'Seconds to wait for the command to finish before returning; output comes inline. Omit to return at once.' }))
const Tail = Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000, description: 'Return only the last N output entries.' }))
const IdParam = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) })
const Terminal = Type.Object({ id: Type.String(), created_at: Type.String(), pid: Type.Integer() })

interface Published { method: string, path: string, operationId: string, summary: string, description: string, schema: Record<string, unknown> }

/**
 * Open Terminal's API (what Open WebUI's TERMINAL_SERVER_CONNECTIONS call), orchestrated: /terminal, or
 * /terminal/p/{policy_id} for a connection with a policy. Thin handlers over services/terminal; the model-facing
 * operations are also listed in this prefix's own /openapi.json, one tool per operationId, as Open WebUI reads it.
 */
const routes: FastifyPluginAsyncTypebox<{ policy?: boolean }> = async (app, opts) => {
  const c = app.config
  const terminal = new OpenTerminal(app.sandboxes, app.workspace, app.contexts, app.store, { maxUploadBytes: c.MAX_UPLOAD_BYTES })
  const tags = ['open-terminal']
  const hide = opts.policy === true // the /p/{policy_id} copy: one set of routes in the main document is enough
  const published: Published[] = []

  app.setErrorHandler(protocolErrors(e => ({ detail: e.message }), (err: FastifyError) => {
    if (err.code === 'FST_REQ_FILE_TOO_LARGE') return new AppError(413, 'file_too_large', `Uploads are limited to ${c.MAX_UPLOAD_BYTES} bytes`)
    if (err.code === 'FST_INVALID_MULTIPART_CONTENT_TYPE' || err.code === 'FST_PROTO_VIOLATION' || (!err.statusCode && /multipart|boundary|end of form|part header|malformed/i.test(err.message))) {
      return new AppError(400, 'invalid_multipart', `The multipart body is malformed: ${err.message}`)
    }
    return null
  }))
  // As Open Terminal (FastAPI) reads queries: a literal "null" is no value, and Python's True/False (what Open WebUI's
  // urlencode makes of a model's booleans) are booleans.
  const BOOLEANS = new Set(['regex', 'case_insensitive', 'match_per_line', 'force'])
  app.addHook('preValidation', async (request) => {
    const query = request.query as Record<string, unknown> | undefined
    if (!query || typeof query !== 'object') return
    for (const [name, value] of Object.entries(query)) {
      if (typeof value !== 'string') continue
      if (value.toLowerCase() === 'null') delete query[name]
      else if (BOOLEANS.has(name) && /^(true|false)$/i.test(value)) query[name] = value.toLowerCase()
    }
  })
  // Open WebUI sends Content-Type: application/json on calls without a body (its DELETE of a chat's attachments):
  // FastAPI accepts that, so here an empty JSON body is no body.
  const json = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') return done(null, undefined)
    json(request, body as string, done)
  })
  await app.register(multipart, { limits: { fileSize: c.MAX_UPLOAD_BYTES, files: 1, fields: 10 } })

  type Req = FastifyRequest<{ Params: { policy_id?: string, id?: string, '*'?: string }, Querystring: Record<string, unknown>, Body: Record<string, unknown> }>
  const scope = (request: FastifyRequest): TerminalScope => scopeOf(request.headers, (request.params as { policy_id?: string }).policy_id)
  /** The request's sandbox and its session's cwd. */
  const at = async (request: FastifyRequest, reply: FastifyReply): Promise<{ record: SandboxRecord, cwd: string }> => {
    const s = scope(request)
    const record = await terminal.sandbox(request.principal, s, clientGone(reply))
    return { record, cwd: await terminal.cwd(request.principal, record, s) }
  }

  /** A route; with an operationId it is also one of the tools this prefix's /openapi.json lists. */
  function route (method: HTTPMethods, url: string, meta: { operationId?: string, summary: string, description?: string, public?: boolean }, schema: Record<string, unknown>, handler: (request: Req, reply: FastifyReply) => Promise<unknown>) {
    if (meta.operationId) published.push({ method: method.toLowerCase(), path: url, operationId: meta.operationId, summary: meta.summary, description: meta.description ?? meta.summary, schema })
    app.route({
      method,
      url,
      config: meta.public ? { public: true } : {},
      schema: { tags, summary: meta.summary, ...(meta.description ? { description: meta.description } : {}), ...(hide ? { hide: true } : {}), ...schema, response: { ...(schema.response as object ?? {}), ...errors } },
      handler: handler as never
    })
  }

  // --- discovery ---------------------------------------------------------------------------------------------------
  route('GET', '/health', { summary: 'Open Terminal health check (no key)', public: true }, { response: { 200: Type.Object({ status: Type.String() }) } }, async () => ({ status: 'ok' }))
  route('GET', '/api/config', { summary: 'Open Terminal feature flags (no key)', public: true },
    { response: { 200: Type.Object({ features: Type.Object({ terminal: Type.Boolean(), notebooks: Type.Boolean(), system: Type.Boolean() }) }) } },
    async () => ({ features: { terminal: true, notebooks: true, system: true } }))
  const environment = () => `A Linux sandbox (Debian) of Interpreter Server, as user "user" with bash; home ${HOME} (the files tools reach it only). ` +
    `Python 3 and the languages ${app.sandboxes.languages().map(l => l.name).join(', ')} are installed. No network access unless the operator allowed hosts. ` +
    'Files, variables and processes persist between calls of this chat.'
  route('GET', '/system', { summary: 'A system prompt for the model' }, { response: { 200: Type.Object({ prompt: Type.String() }) } }, async () => ({
    prompt: `You have access to a computer: ${environment()}\n\nUse your tools to directly interact with the system: run commands, read and write files, and search the filesystem. ` +
      'Prefer verifying the current state before making changes. When running commands, check the output to confirm success.'
  }))
  route('GET', '/info', { operationId: 'get_info', summary: 'Get environment info', description: 'Return information about this environment. Use this to understand the system you are working with.' },
    { response: { 200: Type.Object({ info: Type.String() }) } }, async () => ({ info: environment() }))

  app.get('/openapi.json', {
    schema: { tags, summary: 'This Open Terminal\'s own OpenAPI document: the model-facing operations, one tool each (Open WebUI loads it)', ...(hide ? { hide: true } : {}), response: { 200: Type.Any() } },
    config: { public: true }
  }, async (request) => ({
    openapi: '3.1.0',
    info: { title: 'Open Terminal (Interpreter Server)', version: c.version, description: 'A remote terminal API: one persistent sandbox per user and chat.' },
    servers: [{ url: `${request.protocol}://${request.host}${request.url.replace(/\/openapi\.json(\?.*)?$/, '')}` }],
    security: [{ HTTPBearer: [] }],
    components: { securitySchemes: { HTTPBearer: { type: 'http', scheme: 'bearer' } } },
    paths: published.reduce<Record<string, Record<string, unknown>>>((paths, op) => {
      const path = op.path.replace(/:([a-z_]+)/g, '{$1}')
      const query = op.schema.querystring as { properties?: Record<string, TSchema & { description?: string }>, required?: string[] } | undefined
      const params = op.schema.params as { properties?: Record<string, TSchema> } | undefined
      const body = op.schema.body as TSchema | undefined
      paths[path] = {
        ...paths[path],
        [op.method]: {
          operationId: op.operationId,
          summary: op.summary,
          description: op.description,
          parameters: [
            ...Object.entries(params?.properties ?? {}).map(([name, schema]) => ({ name, in: 'path', required: true, schema })),
            ...Object.entries(query?.properties ?? {}).map(([name, schema]) => ({ name, in: 'query', required: query?.required?.includes(name) ?? false, ...(schema.description ? { description: schema.description } : {}), schema }))
          ],
          ...(body ? { requestBody: { required: true, content: { 'application/json': { schema: body } } } } : {}),
          responses: { 200: { description: 'Successful Response', content: { 'application/json': { schema: (op.schema.response as Record<number, TSchema>)[200] } } } }
        }
      }
      return paths
    }, {})
  }))

  // --- files ---------------------------------------------------------------------------------------------------------
  const Cwd = Type.Object({ cwd: Type.String(), home: Type.Optional(Type.String()), root: Type.Optional(Type.Object({ path: Type.String(), label: Type.String() })) })
  route('GET', '/files/cwd', { summary: 'The session\'s working directory (X-Session-Id), the home and the file browser\'s root' }, { response: { 200: Cwd } }, async (request, reply) => {
    const { cwd } = await at(request, reply)
    return { cwd, home: HOME, root: { path: HOME, label: 'Home' } }
  })
  route('POST', '/files/cwd', { summary: 'Move the session\'s working directory' }, { body: Type.Object({ path: PathText }, loose), response: { 200: Type.Object({ cwd: Type.String() }) } }, async (request, reply) => {
    const s = scope(request)
    const record = await terminal.sandbox(request.principal, s, clientGone(reply))
    return await terminal.setCwd(request.principal, record, s, request.body.path as string)
  })
  const FileEntry = Type.Object({ name: Type.String(), type: Type.String(), size: Type.Integer(), modified: Type.Number() })
  route('GET', '/files/list', { operationId: 'list_files', summary: 'List directory contents', description: 'Return a structured listing of files and directories at the given path.' },
    { querystring: Type.Object({ directory: Type.Optional(Type.String({ maxLength: 4096, default: '.', description: 'Directory path to list.' })) }), response: { 200: Type.Object({ dir: Type.String(), entries: Type.Array(FileEntry) }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.list(record, String(request.query.directory ?? '.'), cwd)
    })
  route('GET', '/files/read', {
    operationId: 'read_file',
    summary: 'Read a file',
    description: 'Read a file and return its contents. Supports text files and images (PNG, JPEG, WebP, etc.). For text files you can optionally request a specific line range. Use display_file to show a file to the user.'
  }, {
    querystring: Type.Object({
      path: Type.String({ minLength: 1, maxLength: 4096, description: 'Path to the file to read.' }),
      start_line: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000_000, description: 'First line to return (1-indexed, inclusive).' })),
      end_line: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000_000, description: 'Last line to return (1-indexed, inclusive).' }))
    }, { required: ['path'] }),
    response: { 200: Type.Object({ path: Type.String(), total_lines: Type.Integer(), content: Type.String() }) }
  }, async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    const q = request.query as { path: string, start_line?: number, end_line?: number }
    const result = await terminal.read(record, q.path, cwd, q.start_line, q.end_line)
    if ('bytes' in result) return reply.type(result.mime).send(result.bytes)
    return result.json
  })
  route('GET', '/files/display', {
    operationId: 'display_file',
    summary: 'Display a file to the user',
    description: 'Open a file in the user\'s file viewer so they can see it. This does not return file content to you: use read_file to read it yourself.'
  }, { querystring: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096, description: 'Path to the file to display.' }) }), response: { 200: Type.Object({ path: Type.String(), exists: Type.Boolean() }) } },
  async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    return await terminal.display(record, String(request.query.path), cwd)
  })
  const view = async (request: Req, reply: FastifyReply, path: string) => {
    const { record, cwd } = await at(request, reply)
    const file = await terminal.view(record, path, cwd)
    return reply.type(file.mime).header('content-length', file.size).header('content-disposition', `inline; filename="${encodeURIComponent(file.name)}"`).send(file.stream)
  }
  route('GET', '/files/view', { summary: 'A file\'s bytes with its type (the file browser\'s preview and download)' },
    { querystring: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }), response: { 200: Type.String({ description: 'the file' }) } },
    async (request, reply) => await view(request, reply, String(request.query.path)))
  route('GET', '/files/serve/*', { summary: 'A file\'s bytes by path (relative links in a previewed page resolve)' }, { response: { 200: Type.String({ description: 'the file' }) } },
    async (request, reply) => await view(request, reply, `/${request.params['*'] ?? ''}`))
  route('POST', '/files/write', { operationId: 'write_file', summary: 'Write a file', description: 'Write text content to a file. Creates parent directories automatically. Overwrites if the file already exists.' },
    { body: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096, description: 'Absolute or relative path to write to.' }), content: Type.String({ description: 'Text content to write to the file.' }) }, loose), response: { 200: Type.Object({ path: Type.String(), size: Type.Integer() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.write(record, request.body.path as string, request.body.content as string, cwd)
    })
  route('POST', '/files/mkdir', { summary: 'Make a directory (and its parents)' }, { body: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }, loose), response: { 200: Type.Object({ path: Type.String() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.mkdir(record, request.body.path as string, cwd)
    })
  route('DELETE', '/files/delete', { summary: 'Delete a file or a directory with its contents' }, { querystring: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }), response: { 200: Type.Object({ path: Type.String(), type: Type.String() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.delete(record, String(request.query.path), cwd)
    })
  route('POST', '/files/move', { summary: 'Move or rename: 404 without the source, 409 when the destination exists' },
    { body: Type.Object({ source: Type.String({ minLength: 1, maxLength: 4096 }), destination: Type.String({ minLength: 1, maxLength: 4096 }) }, loose), response: { 200: Type.Object({ source: Type.String(), destination: Type.String() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.move(record, request.body.source as string, request.body.destination as string, cwd)
    })
  const Chunk = Type.Object({
    target: Type.String({ minLength: 1, description: 'Exact string to find. Must match precisely, including whitespace.' }),
    replacement: Type.String({ description: 'Content to replace the target with.' }),
    start_line: Type.Optional(Type.Integer({ minimum: 1, description: 'Narrow the search to lines at or after this (1-indexed).' })),
    end_line: Type.Optional(Type.Integer({ minimum: 1, description: 'Narrow the search to lines at or before this (1-indexed).' })),
    allow_multiple: Type.Optional(Type.Boolean({ default: false, description: 'If true, replaces all occurrences. If false, errors when multiple matches are found.' }))
  }, loose)
  route('POST', '/files/replace', { operationId: 'replace_file_content', summary: 'Replace content in a file', description: 'Find and replace exact strings in a file. Supports multiple replacements in one call with optional line range narrowing.' },
    { body: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096, description: 'Path to the file to modify.' }), replacements: Type.Array(Chunk, { minItems: 1, maxItems: 100, description: 'Find-and-replace operations, applied in order.' }) }, loose), response: { 200: Type.Object({ path: Type.String(), size: Type.Integer() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.replace(record, request.body.path as string, request.body.replacements as Array<{ target: string, replacement: string }>, cwd)
    })
  const Patterns = (description: string) => Type.Optional(Type.Union([Type.String({ maxLength: 1024 }), Type.Array(Type.String({ maxLength: 1024 }), { maxItems: 50 })], { description }))
  const list = (v: unknown): string[] | undefined => v === undefined ? undefined : Array.isArray(v) ? v.map(String) : [String(v)]
  route('GET', '/files/grep', { operationId: 'grep_search', summary: 'Search file contents', description: 'Search for a text pattern across files in a directory. Returns structured matches with file paths, line numbers, and matching lines. Skips binary files.' }, {
    querystring: Type.Object({
      query: Type.String({ minLength: 1, maxLength: 4096, description: 'Text or regex pattern to search for.' }),
      path: Type.Optional(Type.String({ maxLength: 4096, description: 'Directory or file to search in.' })),
      regex: Type.Optional(Type.Boolean({ description: 'Use regex. Set false for literal search.' })),
      case_insensitive: Type.Optional(Type.Boolean({ description: 'Perform case-insensitive matching.' })),
      include: Patterns('Glob patterns to filter files (e.g. \'*.py\').'),
      match_per_line: Type.Optional(Type.Boolean({ description: 'If true, return each matching line with line numbers. If false, only the names of matching files.' })),
      max_results: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, description: 'Maximum number of matches to return.' }))
    }, { required: ['query'] }),
    response: { 200: Type.Object({ query: Type.String(), path: Type.String(), matches: Type.Array(Type.Object({ file: Type.String(), line: Type.Optional(Type.Integer()), content: Type.Optional(Type.String()) })), truncated: Type.Boolean() }) }
  }, async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    const q = request.query as { query: string, path?: string, regex?: boolean, case_insensitive?: boolean, include?: unknown, match_per_line?: boolean, max_results?: number }
    return await terminal.grep(record, { ...q, include: list(q.include) }, cwd, clientGone(reply))
  })
  route('GET', '/files/glob', { operationId: 'glob_search', summary: 'Search files by name', description: 'Search for files and subdirectories by name within a directory using glob patterns. Results include the relative path, type, size, and modification time.' }, {
    querystring: Type.Object({
      pattern: Type.String({ minLength: 1, maxLength: 1024, description: 'Glob pattern to search for (e.g. \'*.py\').' }),
      path: Type.Optional(Type.String({ maxLength: 4096, description: 'Directory to search within.' })),
      exclude: Patterns('Glob patterns to exclude from search results.'),
      type: Type.Optional(Type.Union([Type.Literal('file'), Type.Literal('directory'), Type.Literal('any')], { description: 'Type filter: file, directory, or any.' })),
      max_results: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, description: 'Maximum number of matches to return.' }))
    }, { required: ['pattern'] }),
    response: { 200: Type.Object({ pattern: Type.String(), path: Type.String(), matches: Type.Array(Type.Object({ path: Type.String(), type: Type.String(), size: Type.Integer(), modified: Type.Number() })), truncated: Type.Boolean() }) }
  }, async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    const q = request.query as { pattern: string, path?: string, exclude?: unknown, type?: 'file' | 'directory' | 'any', max_results?: number }
    return await terminal.glob(record, { ...q, exclude: list(q.exclude) }, cwd, clientGone(reply))
  })
  route('POST', '/files/upload', { summary: 'Upload a file (multipart field `file`) into a directory, made when missing' },
    { querystring: Type.Object({ directory: Type.String({ minLength: 1, maxLength: 4096 }) }), consumes: ['multipart/form-data'], response: { 200: Type.Object({ path: Type.String(), size: Type.Integer() }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      if (!request.isMultipart()) throw new AppError(400, 'invalid_multipart', 'Send the file as multipart/form-data in a field named file')
      const part = await request.file()
      if (!part) throw new AppError(400, 'invalid_multipart', 'Send the file as multipart/form-data in a field named file')
      const uploaded = await terminal.upload(record, String(request.query.directory), part.filename, part.file, cwd)
      if (part.file.truncated) throw new AppError(413, 'file_too_large', `Uploads are limited to ${c.MAX_UPLOAD_BYTES} bytes`)
      return uploaded
    })
  route('POST', '/files/archive', { summary: 'Files and directories as one ZIP download' },
    { body: Type.Object({ paths: Type.Array(Type.String({ minLength: 1, maxLength: 4096 }), { minItems: 1, maxItems: 1000 }) }, loose), response: { 200: Type.String({ description: 'application/zip' }) } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      const zip = await terminal.archive(record, request.body.paths as string[], cwd)
      return reply.type('application/zip').header('content-length', zip.size).header('content-disposition', `attachment; filename="${encodeURIComponent(zip.name)}"`).send(zip.stream)
    })
  route('GET', '/ports', { summary: 'TCP ports listening inside the workspace' }, { response: { 200: Type.Object({ ports: Type.Array(Type.Object({ port: Type.Integer(), pid: Type.Null(), process: Type.Null() })) }) } },
    async (request, reply) => await terminal.ports((await at(request, reply)).record))

  // An app listening in the workspace, over HTTP (the file browser's preview of a port); its own content types pass through.
  await app.register(async (proxied) => {
    proxied.removeAllContentTypeParsers()
    proxied.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
    const PortParams = Type.Object({ port: Type.Integer({ minimum: 1, maximum: 65535 }), '*': Type.String() })
    proxied.route({
      method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'],
      url: '/proxy/:port/*',
      schema: { tags, summary: 'A request to a port of the workspace (the app sees the path after the port)', params: PortParams, ...(hide ? { hide: true } : {}), response: { 200: Type.String({ description: 'the app\'s answer, as it gave it' }), 502: Detail, ...errors } },
      handler: async (request, reply) => {
        const port = (request.params as { port: number }).port
        const mark = `/proxy/${port}`
        const path = request.url.split('?')[0]!
        const prefix = path.slice(0, path.indexOf(mark) + mark.length)
        return await proxyToPort(app, { sandbox: (await at(request, reply)).record, port, prefix }, request, reply)
      }
    })
  })

  // --- processes -----------------------------------------------------------------------------------------------------
  route('GET', '/execute', { operationId: 'list_processes', summary: 'List running commands', description: 'Returns all tracked background commands of this workspace, running and finished.' },
    { response: { 200: Type.Array(ProcessView) } }, async (request, reply) => await terminal.processes((await at(request, reply)).record))
  route('POST', '/execute', { operationId: 'run_command', summary: 'Execute a command', description: 'Run a shell command in the background and return a command ID; with wait, its output when it ends within that many seconds. Use get_process_status for the rest.' }, {
    querystring: Type.Object({ wait: Wait, tail: Tail }),
    body: Type.Object({
      command: Type.String({ minLength: 1, maxLength: 100_000, description: 'Shell command to execute. Supports chaining (&&, ||, ;), pipes (|), and redirections.' }),
      cwd: Type.Optional(Type.Union([Type.String({ maxLength: 4096 }), Type.Null()], { description: 'Working directory for the command (the session\'s by default).' })),
      env: Type.Optional(Type.Union([Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 32_768 }), { maxProperties: 100 }), Type.Null()], { description: 'Extra environment variables.' }))
    }, loose),
    response: { 200: ProcessView }
  }, async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    const b = request.body as { command: string, cwd?: string | null, env?: Record<string, string> | null }
    const q = request.query as { wait?: number, tail?: number }
    return await terminal.execute(record, { command: b.command, ...(b.cwd ? { cwd: b.cwd } : {}), ...(b.env ? { env: b.env } : {}) }, cwd, q)
  })
  route('GET', '/execute/:id/status', { operationId: 'get_process_status', summary: 'Get command status and output', description: 'Returns output since offset (next_offset of the previous answer), the status and the exit code; with wait, waits up to that many seconds for the end.' }, {
    params: IdParam,
    querystring: Type.Object({ wait: Wait, offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Skip output before this; pass next_offset from the previous response.' })), tail: Tail }),
    response: { 200: ProcessView }
  }, async (request, reply) => await terminal.status((await at(request, reply)).record, request.params.id!, request.query as { wait?: number, offset?: number, tail?: number }))
  route('POST', '/execute/:id/input', { operationId: 'send_process_input', summary: 'Send input to a running command', description: 'Write text to the command\'s stdin. Include newline characters as needed; \\x03 is Ctrl-C.' },
    { params: IdParam, body: Type.Object({ input: Type.String({ maxLength: 1_000_000, description: 'Text to send to stdin.' }) }, loose), response: { 200: Type.Object({ status: Type.String() }) } },
    async (request, reply) => await terminal.input((await at(request, reply)).record, request.params.id!, request.body.input as string))
  route('DELETE', '/execute/:id', { operationId: 'kill_process', summary: 'Kill a running command', description: 'Terminate the command: SIGTERM by default, SIGKILL with force=true.' },
    { params: IdParam, querystring: Type.Object({ force: Type.Optional(Type.Boolean({ description: 'Send SIGKILL instead of SIGTERM.' })) }), response: { 200: Type.Object({ status: Type.String() }) } },
    async (request, reply) => await terminal.kill((await at(request, reply)).record, request.params.id!, request.query.force === true))

  // --- terminals: created over HTTP, attached over a WebSocket whose first frame is {"type": "auth", "token": <key>} ----
  route('POST', '/api/terminals', { summary: 'Start an interactive shell on a terminal (80x24, in the session\'s cwd)' }, { response: { 200: Terminal } }, async (request, reply) => {
    const { record, cwd } = await at(request, reply)
    return await terminal.createTerminal(record, cwd)
  })
  route('GET', '/api/terminals', { summary: 'The workspace\'s live terminals' }, { response: { 200: Type.Array(Terminal) } }, async (request, reply) => await terminal.terminals((await at(request, reply)).record))
  route('DELETE', '/api/terminals/:id', { summary: 'End a terminal' }, { params: IdParam, response: { 200: Type.Object({ status: Type.String() }) } },
    async (request, reply) => await terminal.closeTerminal((await at(request, reply)).record, request.params.id!))
  app.route({
    method: 'GET',
    url: '/api/terminals/:id',
    config: { public: true }, // a WebSocket authenticates with its first frame; the plain GET checks its key below
    schema: { tags, summary: 'A terminal: JSON over HTTP (with a key); over a WebSocket the first text frame is {"type": "auth", "token": <key>}, then binary frames both ways and {"type": "resize", cols, rows}', params: IdParam, ...(hide ? { hide: true } : {}), response: { 200: Terminal, ...errors } } as object,
    wsHandler: (socket: WebSocket, request) => { void terminalSocket(socket, request as unknown as Req) },
    handler: async (request, reply) => {
      if (!request.principal) throw new AppError(401, 'missing_api_key', 'Missing API key: send Authorization: Bearer <key>')
      return await terminal.terminal((await at(request, reply)).record, (request.params as { id: string }).id)
    }
  })

  async function terminalSocket (socket: WebSocket, request: Req): Promise<void> {
    const close = (code: number, reason: string) => { if (socket.readyState === socket.OPEN) socket.close(code, reason) }
    let sub: Subscription | null = null
    let target: { record: SandboxRecord, pid: number } | null = null
    socket.on('close', () => {
      void sub?.stop()
      // As Open Terminal does: a terminal ends with its socket (its shell and what runs in it).
      if (target) void app.workspace.signal(target.record, target.pid, 'SIGHUP').catch(() => {})
    })
    // One listener from the first moment: the first text frame authenticates (an Authorization header, when a client
    // can send one, is enough too); keystrokes after it wait, in order, until the terminal is found.
    let authenticate: ((p: Principal | null) => void) | null = null
    const authenticated = request.principal
      ? Promise.resolve(request.principal)
      : new Promise<Principal | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), 10_000)
        authenticate = (p) => { clearTimeout(timer); resolve(p) }
        socket.once('close', () => authenticate?.(null))
      })
    let found!: (t: { record: SandboxRecord, pid: number } | null) => void
    const ready = new Promise<{ record: SandboxRecord, pid: number } | null>(resolve => { found = resolve })
    let queue = Promise.resolve()
    socket.on('message', (data: RawData, isBinary: boolean) => {
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer)
      if (authenticate) {
        const done = authenticate
        authenticate = null
        let msg: { type?: string, token?: unknown } = {}
        try { msg = isBinary ? {} : JSON.parse(bytes.toString()) as typeof msg } catch { msg = {} }
        return done(msg.type === 'auth' && typeof msg.token === 'string' ? app.apiKeys.authenticate(msg.token) ?? null : null)
      }
      queue = queue.then(async () => {
        const at = await ready
        if (!at) return
        if (isBinary) return await app.workspace.input(at.record, at.pid, bytes)
        let msg: { type?: string, cols?: unknown, rows?: unknown, data?: unknown }
        try { msg = JSON.parse(bytes.toString()) as typeof msg } catch { return }
        if (msg.type === 'resize' && Number.isInteger(msg.cols) && Number.isInteger(msg.rows)) {
          await app.workspace.resize(at.record, at.pid, Math.min(Math.max(msg.cols as number, 1), 1000), Math.min(Math.max(msg.rows as number, 1), 1000))
        } else if (msg.type === 'input' && typeof msg.data === 'string') await app.workspace.input(at.record, at.pid, Buffer.from(msg.data))
      }).catch((err: unknown) => { request.log.debug({ err }, 'terminal input failed') })
    })
    const principal = await authenticated
    if (!principal) { found(null); return close(4001, 'Invalid API key') }
    request.principal = principal
    try {
      await app.sockets.check(request)
    } catch {
      found(null)
      return close(4029, 'Too many open sockets for this key')
    }
    app.sockets.hold(principal, socket)
    heartbeat(socket, c.WS_PING_INTERVAL_MS)
    try {
      const s = scopeOf(request.headers, request.params.policy_id, typeof request.query.user_id === 'string' ? request.query.user_id : undefined)
      const record = await terminal.existing(principal, s)
      const id = request.params.id!
      if (!record || !/^\d{1,9}$/.test(id) || !(await terminal.terminals(record)).some(t => t.id === id)) {
        found(null)
        return close(4004, 'Session not found')
      }
      target = { record, pid: Number(id) }
      const { pid } = target
      found(target)
      sub = await app.workspace.attach(record, pid, (e) => {
        if (e.type === 'proc_output' && socket.readyState === socket.OPEN) {
          socket.send(Buffer.from(e.data, 'base64'))
          if (socket.bufferedAmount > c.WS_MAX_BUFFERED_BYTES) close(1013, 'slow consumer')
        } else if (e.type === 'proc_exit') close(1000, 'Session has ended')
      })
      if (socket.readyState !== socket.OPEN) await sub.stop()
      await sub.done
      close(1000, 'Session has ended')
    } catch (err) {
      found(null)
      const e = toAppError(err as Error)
      close(e.statusCode === 404 ? 4004 : 1011, e.message.slice(0, 100))
    }
  }

  // --- notebooks: an .ipynb's cells on a Python kernel of the workspace, the file updated after each ----------------------
  const Notebook = Type.Object({ id: Type.String(), kernel: Type.String(), status: Type.String() })
  const NbParam = Type.Object({ id: Type.String({ minLength: 4, maxLength: 6000 }) })
  route('POST', '/notebooks', { summary: 'Start a kernel for a notebook (.ipynb); the session id names it' },
    { body: Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }, loose), response: { 200: Notebook } },
    async (request, reply) => {
      const { record, cwd } = await at(request, reply)
      return await terminal.openNotebook(record, request.body.path as string, cwd)
    })
  route('POST', '/notebooks/:id/execute', { summary: 'Run one cell (source overridable); its outputs are written into the notebook' }, {
    params: NbParam,
    body: Type.Object({ cell_index: Type.Integer({ minimum: 0, maximum: 100_000 }), source: Type.Optional(Type.Union([Type.String({ maxLength: 1_000_000 }), Type.Null()])) }, loose),
    response: { 200: Type.Object({ status: Type.String(), execution_count: Type.Union([Type.Integer(), Type.Null()]), outputs: Type.Array(Type.Any()) }) }
  }, async (request, reply) => {
    const b = request.body as { cell_index: number, source?: string | null }
    return await terminal.executeCell((await at(request, reply)).record, request.params.id!, b.cell_index, b.source ?? undefined)
  })
  route('GET', '/notebooks/:id', { summary: 'A notebook session' }, { params: NbParam, response: { 200: Type.Object({ id: Type.String(), path: Type.String(), kernel: Type.String(), status: Type.String() }) } },
    async (request, reply) => await terminal.notebookStatus((await at(request, reply)).record, request.params.id!))
  route('DELETE', '/notebooks/:id', { summary: 'Stop a notebook\'s kernel' }, { params: NbParam, response: { 200: Type.Object({ status: Type.String() }) } },
    async (request, reply) => await terminal.closeNotebook((await at(request, reply)).record, request.params.id!))
}

export default routes

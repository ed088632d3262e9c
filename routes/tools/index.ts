import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type, type TSchema } from 'typebox'
import { ErrorSchema, commonErrors } from '../../schemas/common.js'
import { ToolServer, contextOf } from '../../services/tools/index.js'
import { clientGone } from '../../plugins/route-kit.js'

// Flat JSON bodies that tolerate what a client adds (Open WebUI sends every parameter it has, extra ones too).
const loose = { additionalProperties: true }
const Path = Type.String({ maxLength: 1024, description: 'a path in the workspace: relative, or absolute under /home/user' })
const OPERATIONS = {
  run_code: {
    summary: 'Run code',
    description: 'Run code in a persistent sandbox (variables, imports and files stay between calls of this chat). Returns stdout, stderr, the value of the last expression and plots as data URLs. No network access.',
    body: Type.Object({
      code: Type.String({ maxLength: 1_000_000, description: 'the code to run' }),
      language: Type.Optional(Type.String({ maxLength: 32, description: 'python (default), javascript, shell, r, typescript, c, cpp, java, php, rust, go, d or fortran' }))
    }, { ...loose, required: ['code'] }),
    response: Type.Object({
      stdout: Type.String(),
      stderr: Type.String(),
      result: Type.Union([Type.String(), Type.Null()]),
      error: Type.Union([Type.String(), Type.Null()]),
      exit_code: Type.Optional(Type.Integer()),
      images: Type.Array(Type.String({ description: 'data:image/png;base64,...' })),
      note: Type.Optional(Type.String())
    })
  },
  run_command: {
    summary: 'Run a shell command',
    description: 'Run a shell command line (bash) in the sandbox, in /home/user unless cwd is given; returns its exit code and output.',
    body: Type.Object({
      command: Type.String({ minLength: 1, maxLength: 100_000, description: 'the command line' }),
      cwd: Type.Optional(Type.String({ maxLength: 4096, description: 'the directory to run it in' })),
      timeout_ms: Type.Optional(Type.Integer({ minimum: 1, maximum: 3_600_000, description: 'stop it after this long' }))
    }, { ...loose, required: ['command'] }),
    response: Type.Object({ exit_code: Type.Integer(), stdout: Type.String(), stderr: Type.String(), timed_out: Type.Optional(Type.Boolean()) })
  },
  read_file: {
    summary: 'Read a file',
    description: 'Read a file of the sandbox workspace: text as utf8, anything else as base64 (files up to 256 KB).',
    body: Type.Object({ path: Path }, { ...loose, required: ['path'] }),
    response: Type.Object({ path: Type.String(), size: Type.Integer(), encoding: Type.Union([Type.Literal('utf8'), Type.Literal('base64')]), content: Type.String() })
  },
  write_file: {
    summary: 'Write a file',
    description: 'Create or replace a file of the sandbox workspace; parent directories are made.',
    body: Type.Object({
      path: Path,
      content: Type.String({ description: 'the content' }),
      encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { description: 'how content is encoded (utf8 by default)' }))
    }, { ...loose, required: ['path', 'content'] }),
    response: Type.Object({ path: Type.String(), size: Type.Integer() })
  },
  list_files: {
    summary: 'List files',
    description: 'List a directory of the sandbox workspace (the workspace itself by default).',
    body: Type.Object({ path: Type.Optional(Path) }, loose),
    response: Type.Object({ path: Type.String(), entries: Type.Array(Type.Object({ name: Type.String(), path: Type.String(), type: Type.String(), size: Type.Integer() })) })
  }
} satisfies Record<string, { summary: string, description: string, body: TSchema, response: TSchema }>

type Operation = keyof typeof OPERATIONS

/**
 * The OpenAPI tool server at /tools: POST /tools/<operation> with a flat JSON body, always a JSON answer, Bearer keys;
 * its own small OpenAPI document at /tools/openapi.json lists only these operations (one tool each, by operationId).
 * TOOLS_CORS_ORIGINS lets browsers call it directly (Open WebUI's per-user tool connections).
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const tools = new ToolServer(app.sandboxes, app.workspace, app.contexts)
  const origins = app.config.TOOLS_CORS_ORIGINS.split(',').map(o => o.trim()).filter(Boolean)
  const allowed = (origin: string | undefined) => origin && (origins.includes('*') || origins.includes(origin)) ? origin : null

  const cors = (request: FastifyRequest, reply: FastifyReply) => {
    const origin = allowed(request.headers.origin)
    if (!origin) return
    reply.header('access-control-allow-origin', origins.includes('*') ? '*' : origin)
    reply.header('vary', 'Origin')
  }
  app.addHook('onRequest', async (request, reply) => { cors(request, reply) })
  // Preflights carry no key: answered here, before authentication, for the origins allowed (404 for others).
  app.options('/*', { schema: { hide: true }, config: { public: true } }, async (request, reply) => {
    if (!allowed(request.headers.origin)) return reply.status(404).send({ error: { type: 'invalid_request_error', code: 'not_found', message: 'CORS is not enabled for this origin (TOOLS_CORS_ORIGINS)' } })
    reply.header('access-control-allow-methods', 'GET, POST, OPTIONS')
    reply.header('access-control-allow-headers', 'authorization, content-type, x-openwebui-chat-id, x-openwebui-user-id')
    reply.header('access-control-max-age', '600')
    return reply.status(204).send()
  })

  app.get('/openapi.json', {
    schema: { tags: ['tools'], summary: 'The tool server\'s own OpenAPI document: only the model-facing operations, one tool each', response: { 200: Type.Any() } },
    config: { public: true }
  }, async (request) => ({
    openapi: '3.1.0',
    info: { title: 'Interpreter Server tools', version: app.config.version, description: 'Run code and commands and handle files in a persistent sandbox per chat.' },
    servers: [{ url: `${request.protocol}://${request.host}` }],
    security: [{ bearer: [] }],
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths: Object.fromEntries((Object.keys(OPERATIONS) as Operation[]).map(name => {
      const op = OPERATIONS[name]
      return [`/tools/${name}`, {
        post: {
          operationId: name,
          summary: op.summary,
          description: op.description,
          requestBody: { required: true, content: { 'application/json': { schema: op.body } } },
          responses: {
            200: { description: 'the result', content: { 'application/json': { schema: op.response } } },
            default: { description: 'an error: {error: {type, code, message}}', content: { 'application/json': { schema: ErrorSchema } } }
          }
        }
      }]
    }))
  }))

  const schemaOf = (name: Operation) => ({
    tags: ['tools'],
    operationId: name,
    summary: OPERATIONS[name].summary,
    description: OPERATIONS[name].description,
    body: OPERATIONS[name].body,
    response: { 200: OPERATIONS[name].response, 403: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 413: ErrorSchema, 507: ErrorSchema, ...commonErrors }
  })
  const sandbox = async (request: FastifyRequest, reply: FastifyReply) => await tools.sandbox(request.principal, contextOf(request.headers), clientGone(reply))

  app.post('/run_code', { schema: schemaOf('run_code') }, async (request, reply) =>
    await tools.runCode(await sandbox(request, reply), request.body as { code: string, language?: string }))
  app.post('/run_command', { schema: schemaOf('run_command') }, async (request, reply) =>
    await tools.runCommand(await sandbox(request, reply), request.body as { command: string, cwd?: string, timeout_ms?: number }, clientGone(reply)))
  app.post('/read_file', { schema: schemaOf('read_file') }, async (request, reply) =>
    await tools.readFile(await sandbox(request, reply), request.body as { path: string }))
  app.post('/write_file', { schema: schemaOf('write_file') }, async (request, reply) =>
    await tools.writeFile(await sandbox(request, reply), request.body as { path: string, content: string, encoding?: 'utf8' | 'base64' }, app.config.MAX_UPLOAD_BYTES))
  app.post('/list_files', { schema: schemaOf('list_files') }, async (request, reply) =>
    await tools.listFiles(await sandbox(request, reply), (request.body ?? {}) as { path?: string }))
}

export default routes

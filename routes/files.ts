import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, IdParamsSchema, commonErrors } from '../schemas/common.js'
import { FileListSchema, FilePathSchema } from '../schemas/sandboxes.js'
import { AppError } from '../services/errors.js'

/** Refuses absolute paths, `..` and NUL before the agent sees them (the agent also resolves symlinks). */
export function workspacePath (path: string): string {
  if (path.startsWith('/') || path.includes('\0') || path.split('/').includes('..')) {
    throw new AppError(400, 'invalid_path', 'File paths are relative to the workspace (/home/user): no leading "/", no "..", no NUL')
  }
  return path
}

/** The bytes of `source`, refused with a 413 past `maxBytes`. */
async function * limited (source: AsyncIterable<Buffer>, maxBytes: number): AsyncIterable<Buffer> {
  let total = 0
  for await (const piece of source) {
    total += piece.length
    if (total > maxBytes) throw new AppError(413, 'file_too_large', `Uploads are limited to ${maxBytes} bytes`)
    yield piece
  }
}

/** Files in a sandbox's workspace; uploads are the raw request body, streamed. */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes } = app
  const tags = ['files']
  const errors = { 404: ErrorSchema, 410: ErrorSchema, 413: ErrorSchema, 507: ErrorSchema, ...commonErrors }
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

  const open = async (id: string, principal: Parameters<typeof sandboxes.get>[1]) => sandboxes.handle(await sandboxes.get(id, principal))

  app.get('/:id/files', {
    schema: { tags, summary: 'List a directory of the workspace', params: IdParamsSchema, querystring: Type.Object({ path: Type.String({ default: '', maxLength: 1024 }) }), response: { 200: FileListSchema, ...errors } }
  }, async (request) => {
    const path = workspacePath(request.query.path)
    const handle = await open(request.params.id, request.principal)
    return { object: 'list' as const, path, data: await handle.listFiles(path) }
  })

  app.get('/:id/files/*', {
    schema: { tags, summary: 'Download a file (streamed)', params: FilePathSchema, response: { 200: Type.Any({ description: 'the file bytes' }), ...errors } }
  }, async (request, reply) => {
    const path = workspacePath(request.params['*'])
    const handle = await open(request.params.id, request.principal)
    const file = await handle.readFile(path)
    reply.header('content-length', file.size).type('application/octet-stream')
    reply.header('content-disposition', `attachment; filename="${encodeURIComponent(path.split('/').pop() ?? 'file')}"`)
    return reply.send(file.stream)
  })

  app.put('/:id/files/*', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Upload a file: the raw body is the content (streamed); 507 when the workspace is full', params: FilePathSchema, response: { 201: Type.Object({ path: Type.String(), size: Type.Integer() }), ...errors } }
  }, async (request, reply) => {
    const path = workspacePath(request.params['*'])
    if (!path) throw new AppError(400, 'invalid_path', 'A file path is required')
    const handle = await open(request.params.id, request.principal)
    const body = (request.body ?? []) as AsyncIterable<Buffer>
    const size = await handle.writeFile(path, body, app.config.MAX_UPLOAD_BYTES)
    return reply.status(201).send({ path, size })
  })

  app.get('/:id/archive', {
    schema: { tags, summary: 'The whole workspace (/home/user) as a tar stream: what an agent SDK persists', params: IdParamsSchema, produces: ['application/x-tar'], response: { 200: Type.Any({ description: 'a tar archive (POSIX, symlinks kept as symlinks)' }), ...errors } }
  }, async (request, reply) => {
    const handle = await open(request.params.id, request.principal)
    reply.type('application/x-tar').header('content-disposition', `attachment; filename="${request.params.id}.tar"`)
    return reply.send(handle.pack())
  })

  app.put('/:id/archive', {
    preHandler: app.limitPerTarget,
    schema: {
      tags,
      summary: 'Unpack a tar stream (the raw body) into a workspace directory, as the sandbox user: members leading out of it are refused; 507 when the workspace is full',
      params: IdParamsSchema,
      querystring: Type.Object({ path: Type.String({ default: '', maxLength: 1024, description: 'the directory, relative to /home/user; the workspace itself by default' }) }),
      response: { 201: Type.Object({ path: Type.String(), size: Type.Integer({ description: 'the bytes of tar taken' }) }), ...errors }
    }
  }, async (request, reply) => {
    const path = workspacePath(request.query.path)
    const handle = await open(request.params.id, request.principal)
    const size = await handle.unpack(path, limited((request.body ?? []) as AsyncIterable<Buffer>, app.config.MAX_UPLOAD_BYTES))
    return reply.status(201).send({ path, size })
  })

  app.delete('/:id/files/*', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Delete a file or directory', params: FilePathSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    const path = workspacePath(request.params['*'])
    if (!path) throw new AppError(400, 'invalid_path', 'A file path is required')
    await (await open(request.params.id, request.principal)).deleteFile(path)
    return reply.status(204).send(null)
  })
}

export default routes

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { CreateVolumeSchema, VolumeListSchema, VolumeParamsSchema, VolumeSchema, type VolumeRecord } from '../schemas/sandboxes.js'

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const tags = ['sandboxes']
  const errors = { 404: ErrorSchema, 409: ErrorSchema, ...commonErrors }
  const view = async (v: VolumeRecord) => ({ object: 'volume' as const, name: v.name, size_mb: v.size_mb, used_bytes: await app.volumes.usedBytes(v), created_at: v.created_at })

  app.post('', {
    schema: {
      tags,
      summary: 'Make a named volume of the key: a directory that outlives sandboxes, with a size cap',
      description: 'POST /v1/sandboxes {volumes: [{name, path, read_only?}]} mounts it. 409 volume_exists, 429 volume_limit_reached (SANDBOX_MAX_VOLUMES_PER_KEY), 400 volumes_unavailable on a server whose Docker host is elsewhere.',
      body: CreateVolumeSchema,
      response: { 201: VolumeSchema, ...errors }
    }
  }, async (request, reply) => reply.status(201).send(await view(await app.volumes.create(request.principal, request.body.name, request.body.size_mb))))

  app.get('', {
    schema: { tags, summary: "List this key's volumes", response: { 200: VolumeListSchema, ...commonErrors } }
  }, async (request) => ({ object: 'list' as const, data: await Promise.all((await app.volumes.list(request.principal)).map(view)) }))

  app.get('/:name', {
    schema: { tags, summary: 'Get a volume', params: VolumeParamsSchema, response: { 200: VolumeSchema, ...errors } }
  }, async (request) => await view(await app.volumes.get(request.principal, request.params.name)))

  app.delete('/:name', {
    schema: { tags, summary: 'Delete a volume and its files (409 volume_in_use while a sandbox mounts it)', params: VolumeParamsSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await app.volumes.delete(request.principal, request.params.name, await app.sandboxes.list(request.principal))
    return reply.status(204).send(null)
  })
}

export default routes

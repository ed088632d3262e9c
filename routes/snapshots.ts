import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { SnapshotListSchema, SnapshotParamsSchema, SnapshotSchema, type SnapshotRecord } from '../schemas/sandboxes.js'

/** A snapshot as the API shows it (never its volume or host). */
export const snapshotView = (s: SnapshotRecord) => ({
  object: 'snapshot' as const,
  name: s.name,
  created_at: s.created_at,
  size_bytes: s.size_bytes,
  language: s.language,
  source_sandbox: s.source_sandbox,
  keeps: 'files' as const
})

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const tags = ['sandboxes']
  const errors = { 404: ErrorSchema, ...commonErrors }

  app.get('', {
    schema: { tags, summary: "List this key's snapshots (POST /v1/sandboxes/:id/snapshots takes one)", response: { 200: SnapshotListSchema, ...commonErrors } }
  }, async (request) => ({ object: 'list' as const, data: (await app.snapshots.list(request.principal)).map(snapshotView) }))

  app.get('/:name', {
    schema: { tags, summary: 'Get a snapshot', params: SnapshotParamsSchema, response: { 200: SnapshotSchema, ...errors } }
  }, async (request) => snapshotView(await app.snapshots.get(request.principal, request.params.name)))

  app.delete('/:name', {
    schema: { tags, summary: 'Delete a snapshot and its files (sandboxes started from it keep theirs)', params: SnapshotParamsSchema, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await app.snapshots.delete(request.principal, request.params.name)
    return reply.status(204).send(null)
  })
}

export default routes

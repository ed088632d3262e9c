import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { Secrets } from '../services/secrets.js'

const Name = Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,63}$', description: 'letters, digits and _, not starting with a digit; at most 64' })
const Value = Type.String({ minLength: 1, maxLength: 16384, description: 'the secret; never returned, never logged' })
const Description = Type.String({ maxLength: 500 })
const SecretSchema = Type.Object({
  object: Type.Literal('secret'),
  name: Type.String(),
  version: Type.Integer({ description: 'counts rotations' }),
  description: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' })
}, { description: 'a secret\'s name and metadata: its value is never shown' })

/**
 * The key's secrets (issue 26): the egress proxy injects them into requests leaving its sandboxes (network transforms),
 * so the sandbox never holds them. Values go in, and never come out.
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const tags = ['secrets']
  const errors = { 404: ErrorSchema, 409: ErrorSchema, 415: ErrorSchema, ...commonErrors }
  const Params = Type.Object({ name: Name })

  app.post('', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Keep a secret (409 secret_exists; 503 secrets_disabled without SECRETS_KEY)', body: Type.Object({ name: Name, value: Value, description: Type.Optional(Description) }, { additionalProperties: false }), response: { 201: SecretSchema, ...errors } }
  }, async (request, reply) => reply.status(201).send(Secrets.view(await app.secrets.create(request.principal, request.body.name, request.body.value, request.body.description ?? ''))))

  app.get('', {
    schema: { tags, summary: 'The key\'s secrets: names and metadata, never values', response: { 200: Type.Object({ object: Type.Literal('list'), data: Type.Array(SecretSchema) }), ...commonErrors } }
  }, async (request) => ({ object: 'list' as const, data: (await app.secrets.list(request.principal)).map(Secrets.view) }))

  app.get('/:name', {
    schema: { tags, summary: 'A secret\'s metadata', params: Params, response: { 200: SecretSchema, ...errors } }
  }, async (request) => Secrets.view(await app.secrets.get(request.principal, request.params.name)))

  app.put('/:name', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Rotate a secret: the next request that injects it sends the new value', params: Params, body: Type.Object({ value: Value, description: Type.Optional(Description) }, { additionalProperties: false }), response: { 200: SecretSchema, ...errors } }
  }, async (request) => Secrets.view(await app.secrets.rotate(request.principal, request.params.name, request.body.value, request.body.description)))

  app.delete('/:name', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Delete a secret (requests whose transform names it are refused from then on)', params: Params, response: { 204: Type.Null(), ...errors } }
  }, async (request, reply) => {
    await app.secrets.delete(request.principal, request.params.name)
    return reply.status(204).send(null)
  })
}

export default routes

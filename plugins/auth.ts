import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { ApiKeyring, bearerToken, type Principal } from '../services/auth.js'
import { AppError } from '../services/errors.js'

declare module 'fastify' {
  interface FastifyInstance { apiKeys: ApiKeyring }
  interface FastifyRequest {
    /** The API key's identity; set on every route that is not public. */
    principal: Principal
  }
  interface FastifyContextConfig {
    public?: boolean
    /** The route also takes the key from an `X-API-Key` header (LibreChat's Code API clients send it). */
    apiKeyHeader?: boolean
    /** The route also takes the key as Jupyter clients send it: `Authorization: token <key>` or `?token=<key>`. */
    jupyterToken?: boolean
  }
}

const PUBLIC_PREFIXES = ['/docs']

export function isPublic (request: FastifyRequest): boolean {
  return request.routeOptions.config?.public === true || PUBLIC_PREFIXES.some(p => request.url === p || request.url.startsWith(`${p}/`))
}

/** A browser's WebSocket cannot send headers: it may offer the key as a `bearer.<key>` subprotocol (kept out of URLs and logs). */
function subprotocolToken (request: FastifyRequest): string | undefined {
  if (request.headers.upgrade?.toLowerCase() !== 'websocket') return undefined
  const offered = String(request.headers['sec-websocket-protocol'] ?? '').split(',').map(p => p.trim())
  return offered.find(p => p.startsWith('bearer.'))?.slice('bearer.'.length)
}

function apiKeyHeader (request: FastifyRequest): string | undefined {
  const value = request.headers['x-api-key']
  return request.routeOptions.config?.apiKeyHeader && typeof value === 'string' ? value : undefined
}

function jupyterToken (request: FastifyRequest): string | undefined {
  if (!request.routeOptions.config?.jupyterToken) return undefined
  const header = /^token\s+(\S+)$/i.exec(request.headers.authorization ?? '')?.[1]
  const query = (request.query as Record<string, unknown> | undefined)?.token
  return header ?? (typeof query === 'string' && query ? query : undefined)
}

/** A preHandler for routes only admin keys may use. */
export async function requireAdmin (request: FastifyRequest): Promise<void> {
  if (request.principal?.role !== 'admin') throw new AppError(403, 'admin_required', 'This route needs an admin API key')
}

/**
 * Identifies the caller in onRequest (so rate limits can count per key, or per IP before authentication),
 * then rejects unauthenticated calls in preParsing, before any body is read.
 */
export default fp(async (app) => {
  const keyring = new ApiKeyring(app.config.apiKeys)
  app.decorate('apiKeys', keyring)
  app.decorateRequest('principal', null as unknown as Principal)
  app.addHook('onRequest', async (request) => {
    const principal = keyring.authenticate(bearerToken(request.headers.authorization) ?? subprotocolToken(request) ?? apiKeyHeader(request) ?? jupyterToken(request))
    if (principal) request.principal = principal
  })
  app.addHook('preParsing', async (request, reply) => {
    if (request.principal || isPublic(request)) return
    reply.header('WWW-Authenticate', 'Bearer')
    throw request.headers.authorization || request.headers['x-api-key'] || (request.query as Record<string, unknown> | undefined)?.token
      ? new AppError(401, 'invalid_api_key', 'The API key is not valid')
      : new AppError(401, 'missing_api_key', 'Missing API key: send Authorization: Bearer <key>')
  })
}, { name: 'auth', dependencies: ['config'] })

import monitorPlugin from './plugins/monitor.js'
import auditPlugin from './plugins/audit.js'
import type { IncomingMessage } from 'node:http'
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { randomUUID } from 'node:crypto'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import type { Config } from './services/config.js'
import { LogHub } from './services/log-hub.js'
import configPlugin from './plugins/config.js'
import errorsPlugin from './plugins/errors.js'
import requestLogPlugin from './plugins/request-log.js'
import metricsPlugin from './plugins/metrics.js'
import redisPlugin from './plugins/redis.js'
import busPlugin from './plugins/bus.js'
import storePlugin from './plugins/store.js'
import settingsPlugin from './plugins/settings.js'
import authPlugin from './plugins/auth.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import swaggerPlugin from './plugins/swagger.js'
import sandboxesPlugin, { type SandboxPluginOptions } from './plugins/sandboxes.js'
import llmPlugin from './plugins/llm.js'
import interpreterPlugin from './plugins/interpreter.js'
import websocketPlugin from './plugins/websocket.js'
import healthRoutes from './routes/health.js'
import sessionRoutes from './routes/sessions.js'
import sandboxRoutes from './routes/sandboxes.js'
import snapshotRoutes from './routes/snapshots.js'
import volumeRoutes from './routes/volumes.js'
import processRoutes from './routes/processes.js'
import { hostPortRoutes, portHostUrl, sandboxPortRoutes, signedPortRoutes } from './routes/ports.js'
import languageRoutes from './routes/languages.js'
import metricsRoutes from './routes/metrics.js'
import chatRoutes from './routes/chat.js'
import openaiRoutes from './routes/openai.js'
import settingsRoutes from './routes/settings.js'
import wsRoutes from './routes/ws.js'
import adminRoutes from './routes/admin.js'
import uiRoutes from './routes/ui.js'
import mcpRoutes from './routes/mcp/index.js'
import librechatRoutes from './routes/librechat/index.js'
import jupyterRoutes from './routes/jupyter/index.js'
import e2bRoutes from './routes/e2b/index.js'
import toolRoutes from './routes/tools/index.js'
import terminalRoutes from './routes/terminal/index.js'
import secretRoutes from './routes/secrets.js'

export interface AppOptions {
  config: Config
  sandbox?: SandboxPluginOptions
  /** Where `${VAR}` in the models file is looked up (default: process.env). */
  env?: Record<string, string | undefined>
  /** The server's log lines, for the live log view (buildApp makes one). */
  logs?: LogHub
}

/**
 * JSON bodies are validated as sent (a 5 is not a string); only querystrings and params, which are text, are coerced.
 */
function validatorCompiler () {
  const make = (coerceTypes: false | 'array') => {
    const ajv = new Ajv({ coerceTypes, useDefaults: true, removeAdditional: false, allErrors: false, strict: false })
    addFormats.default(ajv)
    return ajv
  }
  const body = make(false)
  const text = make('array')
  return ({ schema, httpPart }: { schema: object, httpPart?: string }) => (httpPart === 'body' ? body : text).compile(schema)
}

declare module 'fastify' {
  interface FastifyInstance { logs: LogHub }
}

/** The whole service as one plugin: what server.ts listens with and what tests register. */
export async function serviceApp (app: FastifyInstance, opts: AppOptions): Promise<void> {
  await app.register(configPlugin, { config: opts.config })
  app.decorate('logs', opts.logs ?? new LogHub())
  await app.register(errorsPlugin)
  await app.register(requestLogPlugin)
  await app.register(metricsPlugin)
  await app.register(redisPlugin)
  await app.register(busPlugin)
  await app.register(storePlugin)
  await app.register(settingsPlugin)
  await app.register(authPlugin)
  await app.register(auditPlugin)
  await app.register(rateLimitPlugin)
  await app.register(swaggerPlugin)
  await app.register(sandboxesPlugin, opts.sandbox ?? {})
  await app.register(monitorPlugin)
  await app.register(llmPlugin, { env: opts.env })
  await app.register(interpreterPlugin)
  await app.register(websocketPlugin)
  app.addHook('onSend', async (request, reply) => { reply.header('x-request-id', request.id) })
  await app.register(healthRoutes, { prefix: '/v1' })
  await app.register(sessionRoutes, { prefix: '/v1/sessions' })
  await app.register(sandboxRoutes, { prefix: '/v1/sandboxes' })
  await app.register(processRoutes, { prefix: '/v1/sandboxes' })
  await app.register(sandboxPortRoutes, { prefix: '/v1/sandboxes' })
  await app.register(signedPortRoutes, { prefix: '/v1/ports' })
  if (app.config.PORT_HOST_DOMAIN) await app.register(hostPortRoutes, { prefix: '/v1/port-hosts' })
  await app.register(snapshotRoutes, { prefix: '/v1/snapshots' })
  await app.register(volumeRoutes, { prefix: '/v1/volumes' })
  await app.register(secretRoutes, { prefix: '/v1/secrets' })
  await app.register(languageRoutes, { prefix: '/v1' })
  await app.register(chatRoutes, { prefix: '/v1' })
  await app.register(openaiRoutes, { prefix: '/v1' })
  await app.register(settingsRoutes, { prefix: '/v1' })
  await app.register(wsRoutes, { prefix: '/v1' })
  await app.register(adminRoutes, { prefix: '/v1' })
  await app.register(mcpRoutes, { prefix: '/mcp' })
  await app.register(librechatRoutes, { prefix: '/librechat/v1' })
  await app.register(jupyterRoutes, { prefix: '/jupyter' })
  await app.register(e2bRoutes, { prefix: '/e2b' })
  await app.register(toolRoutes, { prefix: '/tools' })
  await app.register(terminalRoutes, { prefix: '/terminal' })
  await app.register(terminalRoutes, { prefix: '/terminal/p/:policy_id', policy: true })
  await app.register(uiRoutes)
  await app.register(metricsRoutes)
}

/** Fastify's own options: logging with secrets redacted, request ids, body limit, strict validation. */
export function serverOptions (config: Config, logger: FastifyServerOptions['logger'] = true): FastifyServerOptions {
  return {
    logger: logger === true || (typeof logger === 'object' && logger !== null)
      ? {
          level: config.LOG_LEVEL,
          redact: { paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'req.headers["x-api-key"]', 'headers["x-api-key"]', '*.api_key', '*.apiKey', '*.secret', 'config.apiKeys'], censor: '[redacted]' },
          ...(typeof logger === 'object' ? logger : {})
        }
      : logger,
    bodyLimit: config.BODY_LIMIT,
    // A long id reaches validation (a 400 naming the field) instead of the router's bare 414.
    routerOptions: { maxParamLength: 2048 },
    // Errors raised before routing (a malformed %-escape in the path) get the documented error body too.
    frameworkErrors: (err, _request, reply) => {
      void (reply as unknown as { status: (n: number) => { send: (b: unknown) => void } }).status(400).send({ error: { message: err.message, type: 'invalid_request_error', code: 'bad_url' } })
    },
    // Bounds the time to receive a request (not the response: streams and executions have their own limits);
    // the server checks open requests every second instead of Node's default 30 s.
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    // node:http's own options, passed through (its headers timeout must not exceed the request timeout, or neither fires)
    ...({ http: { connectionsCheckingInterval: Math.min(1000, config.REQUEST_TIMEOUT_MS), headersTimeout: Math.min(60_000, config.REQUEST_TIMEOUT_MS) } } as object),
    requestIdHeader: 'x-request-id',
    logController: new LogController({ disableRequestLogging: true }), // plugins/request-log writes one line per request instead of two
    genReqId: () => randomUUID(),
    trustProxy: false,
    // PORT_HOST_DOMAIN: <port>-<alias>.<domain> is a sandbox's app at its root (routes/ports.ts).
    ...(config.PORT_HOST_DOMAIN ? { rewriteUrl: (req: IncomingMessage) => portHostUrl(req, config.PORT_HOST_DOMAIN!) ?? req.url ?? '/' } : {}),
    return503OnClosing: true,
    forceCloseConnections: true
  }
}

/** The app on its own Fastify instance; with logging on, every line also goes to a LogHub for the live log view. */
export async function buildApp (opts: AppOptions, logger: FastifyServerOptions['logger'] = true): Promise<FastifyInstance> {
  let logs = opts.logs
  if (logger) {
    const next = typeof logger === 'object' && 'stream' in logger && logger.stream ? logger.stream as NodeJS.WritableStream : process.stdout
    logs ??= new LogHub(next)
    logger = { ...(typeof logger === 'object' ? logger : {}), stream: logs }
  }
  opts = { ...opts, logs }
  const app = Fastify(serverOptions(opts.config, logger)).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(validatorCompiler())
  try {
    await app.register(fp(serviceApp), opts)
  } catch (err) {
    await app.close().catch(() => {}) // release what the plugins that did load opened (Redis, Docker streams)
    throw err
  }
  return app as unknown as FastifyInstance
}

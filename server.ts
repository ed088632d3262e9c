import { buildApp } from './app.js'
import { LogHub } from './services/log-hub.js'
import { logFiles } from './services/log-files.js'
import { isLoopback, type Config } from './services/config.js'

export interface ServeOptions { host?: string, port?: number }

/** Starts listening; SIGINT/SIGTERM close gracefully (in-flight requests finish, sandboxes kept for re-adoption). */
export async function serve (config: Config, opts: ServeOptions = {}): Promise<void> {
  const host = opts.host ?? config.HOST
  const port = opts.port ?? config.PORT
  if (config.apiKeys.length === 0 && !isLoopback(host)) {
    throw new Error(`refusing to listen on ${host} with no API key configured: set API_KEYS (name:role:secret,...) or API_KEY, or listen on 127.0.0.1`)
  }
  const logs = config.LOG_FILE
    ? new LogHub(await logFiles({ file: config.LOG_FILE, errorFile: config.LOG_ERROR_FILE, size: config.LOG_FILE_SIZE, frequency: config.LOG_FILE_FREQUENCY, keep: config.LOG_FILE_KEEP }))
    : undefined
  const app = await buildApp({ config, ...(logs ? { logs } : {}) })
  app.server.keepAliveTimeout = 65_000
  if (config.apiKeys.length === 0) app.log.warn('no API key configured: every request is rejected with 401 until API_KEYS or API_KEY is set')
  let closing = false
  const shutdown = (signal: string) => {
    if (closing) process.exit(1)
    closing = true
    app.log.info({ signal }, 'shutting down')
    const timer = setTimeout(() => process.exit(1), 15_000)
    timer.unref()
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.on('SIGINT', () => shutdown('SIGINT'))
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  await app.listen({ host, port })
}

import fp from 'fastify-plugin'
import Docker from 'dockerode'
import { randomUUID } from 'node:crypto'
import { SandboxPool } from '../services/sandbox/pool.js'
import { SandboxService } from '../services/sandbox/service.js'
import { sandboxImageTag } from '../services/sandbox/image.js'

declare module 'fastify' {
  interface FastifyInstance { sandboxes: SandboxService }
}

export interface SandboxPluginOptions {
  /** Wait for the warm pool's first fill before the app is ready (tests and benchmarks). */
  waitWarm?: boolean
}

export default fp<SandboxPluginOptions>(async (app, opts) => {
  const c = app.config
  const docker = new Docker({ socketPath: c.DOCKER_SOCKET })
  const log = app.log.child({ component: 'sandbox' })
  const pool = new SandboxPool(docker, {
    size: c.POOL_SIZE,
    namespace: c.SANDBOX_NAMESPACE,
    instance: app.bus?.id ?? randomUUID(),
    limits: {
      image: c.SANDBOX_IMAGE ?? sandboxImageTag(),
      runtime: c.SANDBOX_RUNTIME,
      cpus: c.SANDBOX_CPUS,
      memoryMb: c.SANDBOX_MEMORY_MB,
      pids: c.SANDBOX_PIDS,
      workspaceMb: c.SANDBOX_WORKSPACE_MB,
      tmpMb: c.SANDBOX_TMP_MB,
      killGraceMs: c.KERNEL_KILL_GRACE_MS
    }
  }, log)
  const service = new SandboxService(pool, app.store, {
    maxPerKey: c.MAX_SANDBOXES_PER_KEY,
    defaultTimeoutS: c.SANDBOX_TIMEOUT_S,
    maxTimeoutS: c.SANDBOX_MAX_TIMEOUT_S,
    executionTimeoutMs: c.EXECUTION_TIMEOUT_MS,
    maxExecutionTimeoutMs: c.MAX_EXECUTION_TIMEOUT_MS,
    maxCodeSize: c.MAX_CODE_SIZE,
    outputLimit: c.SANDBOX_OUTPUT_LIMIT,
    keepOnClose: c.SANDBOX_KEEP_ON_CLOSE,
    cpus: c.SANDBOX_CPUS,
    memoryMb: c.SANDBOX_MEMORY_MB,
    reapIntervalMs: c.SANDBOX_REAP_INTERVAL_MS,
    ...(app.bus ? { isLive: app.bus.alive.bind(app.bus) } : {})
  }, log)
  app.decorate('sandboxes', service)
  app.settings.on('change', (s: { execution_timeout_ms: number, pool_size: number }) => {
    service.setExecutionTimeout(s.execution_timeout_ms)
    if (s.pool_size !== pool.stats.size && c.SANDBOX_ENABLED) void pool.resize(s.pool_size)
  })
  if (c.SANDBOX_ENABLED) await service.start(opts.waitWarm ?? false)
  app.addHook('onClose', () => service.close())
}, { name: 'sandboxes', dependencies: ['config', 'store', 'bus', 'settings'] })

import { ContextSandboxes } from '../services/sandbox/contexts.js'
import { codePrefix } from '../services/audit.js'
import fp from 'fastify-plugin'
import { Gauge } from 'prom-client'
import { randomUUID } from 'node:crypto'
import { availableParallelism, totalmem } from 'node:os'
import { SandboxPool } from '../services/sandbox/pool.js'
import { DockerDriver } from '../services/sandbox/driver.js'
import { SandboxService, parsePackageIndexes } from '../services/sandbox/service.js'
import { sandboxImageTag } from '../services/sandbox/image.js'
import { EgressProxy, parseAllowedList } from '../services/sandbox/egress.js'
import { ownEndpoints, parseDockerHosts } from '../services/sandbox/hosts.js'
import { Snapshots } from '../services/sandbox/snapshots.js'
import { Volumes } from '../services/sandbox/volumes.js'
import { Workspace } from '../services/sandbox/workspace.js'
import { TlsInterceptor } from '../services/sandbox/tls-intercept.js'
import { Secrets } from '../services/secrets.js'

declare module 'fastify' {
  interface FastifyInstance { sandboxes: SandboxService, snapshots: Snapshots, volumes: Volumes, workspace: Workspace, secrets: Secrets, contexts: ContextSandboxes }
}

export interface SandboxPluginOptions {
  /** Wait for the warm pool's first fill before the app is ready (tests and benchmarks). */
  waitWarm?: boolean
}

export default fp<SandboxPluginOptions>(async (app, opts) => {
  const c = app.config
  const hosts = parseDockerHosts(c.SANDBOX_DOCKER_HOSTS, c.DOCKER_SOCKET)
  const instance = app.bus?.id ?? randomUUID()
  const log = app.log.child({ component: 'sandbox' })
  const pools = hosts.map(({ name, docker, local }) => new SandboxPool(new DockerDriver(docker), {
    host: name,
    size: c.POOL_SIZE,
    max: c.POOL_MAX ?? c.POOL_SIZE * 4,
    idleShrinkMs: c.POOL_IDLE_SHRINK_MS,
    startConcurrency: c.SANDBOX_START_CONCURRENCY ?? Math.max(2, availableParallelism()),
    queueTimeoutMs: c.SANDBOX_QUEUE_TIMEOUT_MS,
    // The socket channel needs the daemon on this machine (the agent directory is bind-mounted from here). gVisor keeps
    // a socket made inside the sandbox inside its own kernel unless runsc runs with --host-uds: the pool reads that
    // from the engine unless SANDBOX_RUNSC_HOST_UDS says it.
    ...(c.SANDBOX_AGENT_CHANNEL === 'socket' && local ? { agentSocketDir: c.SANDBOX_AGENT_SOCKET_DIR } : {}),
    ...(c.SANDBOX_RUNSC_HOST_UDS !== undefined ? { runtimeHostSockets: c.SANDBOX_RUNSC_HOST_UDS } : {}),
    ...(c.SANDBOX_AGENT_DIR_GROUP !== undefined ? { agentDirGroup: c.SANDBOX_AGENT_DIR_GROUP } : {}),
    pauseMode: c.SANDBOX_PAUSE_MODE,
    observe: {
      started: (ms) => app.metrics.sandboxStarts.observe(ms / 1000),
      failed: () => app.metrics.sandboxStartFailures.inc(),
      rejected: (reason) => app.metrics.capacityRejections.inc({ reason })
    },
    namespace: c.SANDBOX_NAMESPACE,
    instance,
    limits: {
      image: c.SANDBOX_IMAGE ?? sandboxImageTag(c.SANDBOX_IMAGE_PROFILE),
      runtime: c.SANDBOX_RUNTIME,
      cpus: c.SANDBOX_CPUS,
      memoryMb: c.SANDBOX_MEMORY_MB,
      pids: c.SANDBOX_PIDS,
      workspaceMb: c.SANDBOX_WORKSPACE_MB,
      tmpMb: c.SANDBOX_TMP_MB,
      killGraceMs: c.KERNEL_KILL_GRACE_MS,
      ...(c.SANDBOX_PRELOAD ? { preload: c.SANDBOX_PRELOAD } : {})
    }
  }, hosts.length > 1 ? log.child({ host: name }) : log))
  const pool = pools[0]
  const egressAllowed = parseAllowedList(c.SANDBOX_EGRESS_ALLOWED)
  // The keys' secrets, and the deployment CA that lets the egress proxy change HTTPS requests (both optional).
  const secrets = new Secrets(app.store, c.SECRETS_KEY, c.SECRETS_KEY_PREVIOUS, c.SECRETS_MAX_PER_KEY)
  app.decorate('secrets', secrets)
  const tls = c.EGRESS_CA_DIR ? await TlsInterceptor.load(c.EGRESS_CA_DIR, c.EGRESS_UPSTREAM_CA) : undefined
  const packages = parsePackageIndexes(c.SANDBOX_PACKAGE_INDEXES)
  const egress = new EgressProxy({
    ...(c.SANDBOX_PACKAGE_CACHE_DIR && packages.rules.length ? { packageCache: { dir: c.SANDBOX_PACKAGE_CACHE_DIR, hosts: packages.rules } } : {}),
    ...(secrets.enabled ? { secrets: async (owner: string, templates: string[]) => await secrets.fill(owner, templates) } : {}),
    ...(tls ? { tls } : {}),
    observe: (event) => app.metrics.egressEvents.inc({ event }),
    maxBytes: c.SANDBOX_EGRESS_MAX_BYTES,
    maxConnections: c.SANDBOX_EGRESS_MAX_CONNECTIONS,
    log: log.child({ egress: true }),
    operatorAllowed: egressAllowed,
    ownEndpoints: ownEndpoints(c, hosts),
    ...(c.SANDBOX_AGENT_DIR_GROUP !== undefined ? { socketGroup: c.SANDBOX_AGENT_DIR_GROUP } : {})
  })
  // Volumes are loop-mounted by this server and bind-mounted by the Docker daemon: one host, on this machine.
  const volumes = new Volumes(app.store, {
    dir: c.SANDBOX_VOLUME_DIR,
    namespace: c.SANDBOX_NAMESPACE,
    maxPerKey: c.SANDBOX_MAX_VOLUMES_PER_KEY,
    maxMb: c.SANDBOX_VOLUME_MAX_MB,
    ...(hosts.length > 1 || !hosts[0].local ? { unavailable: 'named volumes need one Docker host, on the machine this server runs on' } : {})
  }, log)
  const service = new SandboxService(pools, app.store, {
    volumes,
    ...(secrets.enabled ? { checkSecrets: async (owner: string, templates: string[], field: string) => await secrets.check(owner, templates, field) } : {}),
    ...(tls ? { egressCa: tls.caCert } : {}),
    packages,
    enabled: c.SANDBOX_ENABLED,
    egress,
    egressAllowed,
    networkDefault: parseAllowedList(c.SANDBOX_NETWORK_DEFAULT, 'SANDBOX_NETWORK_DEFAULT'),
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
    maxSandboxes: c.MAX_SANDBOXES,
    imageProfile: c.SANDBOX_IMAGE_PROFILE,
    observeExecution: ({ language, status, protocol, seconds, sandbox_id: sandbox, exit_code: exit, code }) => {
      app.metrics.executions.inc({ language, status, protocol })
      app.metrics.executionDuration.observe({ language }, seconds)
      app.audit.record('execute', sandbox, { language, protocol, status, duration_ms: Math.round(seconds * 1000), exit: exit ?? null, code: codePrefix(code) })
    },
    audit: (action, record, detail) => { app.audit.record(action, record.id, { ...detail, owner: record.owner }) },
    memoryBudgetMb: c.SANDBOX_MEMORY_BUDGET_MB ?? Math.floor(totalmem() / 1024 / 1024 * 0.75),
    reapIntervalMs: c.SANDBOX_REAP_INTERVAL_MS,
    onRejected: (reason) => app.metrics.capacityRejections.inc({ reason }),
    idleAction: c.SANDBOX_IDLE_ACTION,
    pausedTtlS: c.SANDBOX_PAUSED_TTL_S,
    observePause: ({ action, mode, seconds, bytes }) => {
      app.metrics.pauses.observe({ action, mode }, seconds)
      if (bytes) app.metrics.pausedBytes.inc(bytes)
    },
    ...(app.bus ? { isLive: app.bus.alive.bind(app.bus) } : {})
  }, log)
  app.decorate('sandboxes', service)
  app.decorate('volumes', volumes)
  app.decorate('contexts', new ContextSandboxes(service, app.store))
  app.decorate('snapshots', new Snapshots(service, app.store, { maxPerKey: c.SANDBOX_MAX_SNAPSHOTS_PER_KEY, maxFork: c.SANDBOX_MAX_FORK }, log))
  let secret: Promise<string> | undefined
  app.decorate('workspace', new Workspace(service, {
    maxProcesses: c.SANDBOX_MAX_PROCESSES,
    maxTerminals: c.SANDBOX_MAX_TERMINALS,
    maxWatchers: c.SANDBOX_MAX_WATCHERS,
    outputLimit: c.SANDBOX_OUTPUT_LIMIT,
    maxUrlTtlS: c.PORT_URL_MAX_TTL_S,
    secret: () => (secret ??= c.PORT_URL_SECRET ? Promise.resolve(c.PORT_URL_SECRET) : app.store.sharedSecret('port-url').catch((err: Error) => { secret = undefined; throw err })),
    observeProcess: kind => app.metrics.processes.inc({ kind }),
    observeProxied: (direction, bytes) => app.metrics.portBytes.inc({ direction }, bytes)
  }))
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({ name, help, registers: [app.metrics.registry], collect () { this.set(read()) } })
  const sum = (read: (p: SandboxPool) => number) => () => pools.reduce((n, p) => n + read(p), 0)
  gauge('sandbox_start_queue_length', 'Requests waiting for a container start', sum(p => p.stats.queued))
  gauge('sandbox_starts_in_flight', 'Containers starting now', sum(p => p.stats.creating))
  gauge('sandbox_pool_warm', 'Warm containers ready to hand out', sum(p => p.stats.warm))
  gauge('sandbox_pool_target', 'Warm containers the elastic pool aims for', sum(p => p.stats.target))
  void new Gauge({
    name: 'sandbox_docker_host_up',
    help: 'Whether each Docker host answers (1) or not (0)',
    labelNames: ['host'],
    registers: [app.metrics.registry],
    collect () { for (const h of service.hosts) this.set({ host: h.name }, h.status === 'up' ? 1 : 0) }
  })
  void new Gauge({
    name: 'sandbox_docker_host_sandboxes',
    help: 'Sandboxes on each Docker host (as of the last creation or reaper round)',
    labelNames: ['host'],
    registers: [app.metrics.registry],
    collect () { for (const h of service.hosts) this.set({ host: h.name }, h.live) }
  })
  gauge('sandboxes_live', 'Sandboxes on every Docker host (all keys, as of the last creation or reaper round)', () => service.capacity.live)
  gauge('sandboxes_paused', 'Paused sandboxes on every Docker host (they hold no memory; as of the last pause, resume or reaper round)', () => service.capacity.paused)
  gauge('sandbox_memory_budget_used_bytes', "The sum of live sandboxes' memory limits", () => service.capacity.memory_used_mb * 1024 * 1024)
  gauge('sandbox_memory_budget_bytes', "The budget for the sum of sandboxes' memory limits", () => service.capacity.memory_budget_mb * 1024 * 1024)
  app.settings.on('change', (s: { execution_timeout_ms: number, pool_size: number }) => {
    service.setExecutionTimeout(s.execution_timeout_ms)
    if (s.pool_size !== pool.stats.size && c.SANDBOX_ENABLED) for (const p of pools) void p.resize(s.pool_size)
  })
  if (c.SANDBOX_ENABLED) await service.start(opts.waitWarm ?? false)
  app.addHook('onClose', () => service.close())
}, { name: 'sandboxes', dependencies: ['audit', 'config', 'store', 'bus', 'settings', 'metrics'] })

import { Type, type Static } from 'typebox'

const Int = (min: number, def?: number, description?: string) =>
  Type.Integer({ minimum: min, ...(def === undefined ? {} : { default: def }), ...(description ? { description } : {}) })

/** The environment variables the server reads, after string conversion. */
export const EnvSchema = Type.Object({
  HOST: Type.String({ default: '127.0.0.1' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8000 }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  API_KEYS: Type.Optional(Type.String({ description: 'comma-separated name:role:secret' })),
  API_KEY: Type.Optional(Type.String({ minLength: 8, description: 'a single admin key' })),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  REDIS_PREFIX: Type.String({ default: 'is:' }),
  MODELS_FILE: Type.String({ default: 'models.yaml' }),
  DEFAULT_MODEL: Type.Optional(Type.String()),
  MAX_TOKENS: Int(1, 4096),
  TEMPERATURE: Type.Number({ minimum: 0, maximum: 2, default: 0.7 }),
  MAX_STEPS: Int(1, 20, 'model calls per chat turn'),
  MODEL_OUTPUT_LIMIT: Int(100, 2800, 'characters of code output passed back to the model (the tail is kept)'),
  CONFIRM_TIMEOUT_MS: Int(1000, 600000, 'how long a run waits for a code approval'),
  RUN_LOCK_TTL_MS: Int(1000, 30000, 'the session lock a running turn holds, renewed every third of it; a crashed process frees the session after this'),
  AUTO_RUN: Type.Boolean({ default: true, description: 'default for auto_run' }),
  WS_PING_INTERVAL_MS: Int(50, 30000, 'the server pings each socket this often and drops it after a missed pong'),
  WS_MAX_MESSAGE_BYTES: Int(1024, 1024 * 1024),
  WS_MAX_SOCKETS_PER_KEY: Int(1, 20),
  WS_MAX_BUFFERED_BYTES: Int(1024, 1024 * 1024, 'a socket with more unsent bytes than this stops reading the event log until it drains'),
  WS_SLOW_CLOSE_MS: Int(100, 60000, 'a socket that does not drain for this long is closed (it can resume)'),
  RATE_LIMIT_PER_MINUTE: Int(1, 60),
  SESSION_RATE_LIMIT_PER_MINUTE: Int(1, 10),
  SESSION_TTL_S: Int(1, 7 * 24 * 3600),
  BODY_LIMIT: Int(1024, 2 * 1024 * 1024, 'largest JSON body accepted'),
  METRICS_PUBLIC: Type.Boolean({ default: false }),
  SANDBOX_ENABLED: Type.Boolean({ default: true }),
  SANDBOX_IMAGE: Type.Optional(Type.String({ minLength: 1 })),
  SANDBOX_RUNTIME: Type.Optional(Type.String({ minLength: 1 })),
  SANDBOX_AGENT_CHANNEL: Type.Enum(['socket', 'attach'], { default: 'socket', description: 'how the server talks to sandbox agents: a unix socket in a bind-mounted directory (skips dockerd; needs the server beside the Docker daemon; not under runsc), or docker attach' }),
  SANDBOX_AGENT_SOCKET_DIR: Type.String({ minLength: 1, default: '/run/interpreter-server/agents', description: 'where the per-sandbox socket directories are made (a path the Docker daemon sees the same way)' }),
  SANDBOX_CPUS: Type.Number({ exclusiveMinimum: 0, maximum: 64, default: 1 }),
  SANDBOX_MEMORY_MB: Int(64, 512),
  SANDBOX_PIDS: Int(16, 100),
  SANDBOX_WORKSPACE_MB: Int(1, 256),
  SANDBOX_TMP_MB: Int(1, 64),
  SANDBOX_TIMEOUT_S: Int(1, 900, 'idle time before a sandbox is removed'),
  SANDBOX_MAX_TIMEOUT_S: Int(1, 24 * 3600),
  SANDBOX_KEEP_ON_CLOSE: Type.Boolean({ default: true, description: 'leave containers for re-adoption when the server stops' }),
  SANDBOX_OUTPUT_LIMIT: Int(1024, 1024 * 1024),
  EXECUTION_TIMEOUT_MS: Int(100, 30000),
  MAX_EXECUTION_TIMEOUT_MS: Int(100, 600000),
  KERNEL_KILL_GRACE_MS: Int(100, 2000),
  POOL_SIZE: Int(0, 2, 'warm containers kept at least'),
  POOL_MAX: Type.Optional(Int(0, undefined, 'warm containers kept at most while acquisitions outpace POOL_SIZE (default: 4 × POOL_SIZE)')),
  POOL_IDLE_SHRINK_MS: Int(50, 60000, 'a grown pool shrinks back to POOL_SIZE after this long without an acquisition'),
  SANDBOX_START_CONCURRENCY: Type.Optional(Int(1, undefined, 'containers starting at once (default: the host\'s cores, at least 2)')),
  SANDBOX_QUEUE_TIMEOUT_MS: Int(100, 30000, 'longest a request waits for a container start; beyond it, 503 capacity_exhausted'),
  MAX_SANDBOXES: Int(1, 1000, 'sandboxes on this Docker host, all keys together'),
  SANDBOX_MEMORY_BUDGET_MB: Type.Optional(Int(64, undefined, 'the sum of live sandboxes\' memory limits may not pass this (default: 75 % of the host\'s memory)')),
  SANDBOX_PRELOAD: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_.]*(,[A-Za-z_][A-Za-z0-9_.]*)*$', description: 'python modules the kernel of every new sandbox imports before it counts as ready, e.g. numpy,pandas,matplotlib.pyplot' })),
  MAX_SANDBOXES_PER_KEY: Int(1, 10),
  MAX_CODE_SIZE: Int(1, 1024 * 1024),
  MAX_UPLOAD_BYTES: Int(1, 100 * 1024 * 1024),
  SANDBOX_NAMESPACE: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', default: 'default', description: 'label value that marks this server\'s containers' }),
  SANDBOX_REAP_INTERVAL_MS: Int(50, 5000),
  DOCKER_SOCKET: Type.String({ default: '/var/run/docker.sock' })
})
export type Env = Static<typeof EnvSchema>

export type Role = 'user' | 'admin'
export interface ApiKeyConfig { name: string, role: Role, secret: string }

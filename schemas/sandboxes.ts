import { Type, type Static } from 'typebox'
import { Metadata } from './common.js'

/** python, javascript, shell and r have stateful kernels; the others run as a fresh process per execution (GET /v1/languages). */
export const Language = Type.Enum(['python', 'javascript', 'shell', 'typescript', 'c', 'cpp', 'java', 'php', 'rust', 'go', 'd', 'fortran', 'r'])
// eslint-disable-next-line @typescript-eslint/no-redeclare -- a schema and its type share the name
export type Language = Static<typeof Language>
/** The languages with a stateful kernel in the sandbox. */
export type KernelLanguage = 'python' | 'javascript' | 'shell' | 'r'

export const LanguageInfoSchema = Type.Object({
  id: Language,
  name: Type.String(),
  aliases: Type.Array(Type.String()),
  stateful: Type.Boolean({ description: 'a kernel keeps variables between executions; otherwise each execution is a fresh process (files persist either way)' }),
  available: Type.Boolean({ description: "this server's image has it (SANDBOX_IMAGE_PROFILE)" })
})
export const LanguageListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(LanguageInfoSchema) })

export const ResourcesSchema = Type.Object({
  cpus: Type.Optional(Type.Number({ minimum: 0.01, maximum: 16, description: 'Docker gives a container at least 0.01 CPU, and at most the host has' })),
  memory_mb: Type.Optional(Type.Integer({ minimum: 64, maximum: 65536 }))
}, { additionalProperties: false })

export const TransformSchema = Type.Object({
  host: Type.String({ maxLength: 260, description: 'an entry of allow (the same text): the requests it changes go there' }),
  path_prefix: Type.Optional(Type.String({ maxLength: 1024, description: 'only requests under this path' })),
  headers: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 4096 }), { description: 'headers set (replacing the code\'s), e.g. {"Authorization": "Bearer {{secret:OPENAI_KEY}}"}: {{secret:NAME}} is the key\'s secret, read when the request leaves' })),
  basic_auth: Type.Optional(Type.Object({ username: Type.String({ maxLength: 1024 }), password: Type.String({ maxLength: 1024 }) }, { additionalProperties: false, description: 'Authorization: Basic from these (templates too)' })),
  replace_placeholders: Type.Optional(Type.Boolean({ description: 'also replace {{secret:NAME}} in the headers the code sent (to this host only)' }))
}, { additionalProperties: false, description: 'changes requests to one host: the sandbox never holds the secret' })

export const NetworkPolicySchema = Type.Union([
  Type.Literal('none'),
  Type.Object({
    allow: Type.Array(Type.String({ maxLength: 260 }), { maxItems: 100, description: 'host, host:port, *.domain or an address ([v6]:port); without a port, 80 and 443' }),
    transforms: Type.Optional(Type.Array(TransformSchema, { maxItems: 50, description: 'secrets injected by the egress proxy into requests to allowed hosts (HTTPS ones through the deployment CA)' }))
  }, { additionalProperties: false })
], { description: 'none (the default): no network at all; allow: only these destinations, through the egress proxy' })
export type NetworkPolicy = Static<typeof NetworkPolicySchema>

export const OnTimeoutSchema = Type.Union([Type.Literal('remove'), Type.Literal('pause')], { description: 'what the sandbox becomes once idle past its timeout: removed, or paused (it resumes on its next use); default: the server\'s SANDBOX_IDLE_ACTION' })

/** What may change on a sandbox. */
export const UpdateSandboxSchema = Type.Object({
  timeout_s: Type.Optional(Type.Integer({ minimum: 1, description: 'a new idle timeout, counted from now (extend it before it ends; capped by SANDBOX_MAX_TIMEOUT_S)' })),
  on_timeout: Type.Optional(OnTimeoutSchema),
  network: Type.Optional({ ...NetworkPolicySchema, description: 'a new network policy, live: checked as at creation; the proxy serves it at once (open connections are cut) and processes started from now on use it; none closes it' })
}, { additionalProperties: false, minProperties: 1 })

export const VolumeName = Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$', description: 'lower-case letters, digits, _ . -; at most 63, starting with a letter or digit' })
export const VolumeMountSchema = Type.Object({
  name: VolumeName,
  path: Type.String({ maxLength: 200, description: 'where the sandbox sees it: a directory under /home/user or /mnt (not /mnt/data, which is the home)' }),
  read_only: Type.Optional(Type.Boolean())
}, { additionalProperties: false })
export type VolumeMount = Static<typeof VolumeMountSchema>

export const SnapshotName = Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$', description: 'lower-case letters, digits, _ . -; at most 63, starting with a letter or digit' })

export const CreateSandboxSchema = Type.Object({
  snapshot: Type.Optional({ ...SnapshotName, description: 'start from this snapshot of the key: its files (and its language, unless one is given)' }),
  language: Type.Optional(Language),
  resources: Type.Optional(ResourcesSchema),
  timeout_s: Type.Optional(Type.Integer({ minimum: 1, description: 'idle time before removal (or pause, with on_timeout); capped by SANDBOX_MAX_TIMEOUT_S' })),
  on_timeout: Type.Optional(OnTimeoutSchema),
  env: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128 }), Type.String({ maxLength: 4096 }))),
  metadata: Type.Optional(Metadata),
  network: Type.Optional(NetworkPolicySchema),
  volumes: Type.Optional(Type.Array(VolumeMountSchema, { maxItems: 8, description: "the key's named volumes to mount (POST /v1/volumes makes one); such a sandbox starts its own container, not a warm one" }))
}, { additionalProperties: false })
export type CreateSandbox = Static<typeof CreateSandboxSchema>

/** What the store keeps about a sandbox (never its env values). */
export const SandboxRecordSchema = Type.Object({
  id: Type.String(),
  owner: Type.String(),
  container_id: Type.String(),
  language: Language,
  created_at: Type.String(),
  last_used_at: Type.String(),
  timeout_s: Type.Integer(),
  cpus: Type.Number(),
  memory_mb: Type.Integer(),
  metadata: Metadata,
  session_id: Type.Union([Type.String(), Type.Null()]),
  /** The egress allow list, when the sandbox has one. */
  network: Type.Optional(Type.Array(Type.String())),
  /** What the egress proxy changes in its requests (templates: never a secret's value). */
  network_transforms: Type.Optional(Type.Array(TransformSchema)),
  /** Set by an admin key or the operator's default: the user wall (services/sandbox/egress.ts) does not apply. */
  network_trusted: Type.Optional(Type.Boolean()),
  /** The Docker host it lives on (SANDBOX_DOCKER_HOSTS); absent: the first. */
  host: Type.Optional(Type.String()),
  /** Absent: the server's SANDBOX_IDLE_ACTION. */
  on_timeout: Type.Optional(OnTimeoutSchema),
  /** Set while it is paused: when, and how (memory: its container is stopped at a checkpoint; files: its container is gone and `volume` keeps its workspace). */
  paused: Type.Optional(Type.Object({ at: Type.String(), mode: Type.Union([Type.Literal('memory'), Type.Literal('files')]), volume: Type.Optional(Type.String()) })),
  /** Its container was restored from a checkpoint (some hosts cannot checkpoint such a container again). */
  restored: Type.Optional(Type.Boolean()),
  /** The named volumes it mounts. */
  volumes: Type.Optional(Type.Array(VolumeMountSchema))
})
export type SandboxRecord = Static<typeof SandboxRecordSchema>

export const SandboxSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('sandbox'),
  owner: Type.String({ description: 'the name of the key it belongs to' }),
  language: Language,
  status: Type.Union([Type.Literal('ready'), Type.Literal('busy'), Type.Literal('paused')], { description: 'paused: it holds no memory or CPU; its next use (or POST .../resume) resumes it' }),
  created_at: Type.String({ format: 'date-time' }),
  last_used_at: Type.String({ format: 'date-time' }),
  expires_at: Type.String({ format: 'date-time' }),
  timeout_s: Type.Integer(),
  resources: Type.Object({ cpus: Type.Number(), memory_mb: Type.Integer() }),
  metadata: Metadata,
  session_id: Type.Union([Type.String(), Type.Null()]),
  network: NetworkPolicySchema,
  volumes: Type.Optional(Type.Array(VolumeMountSchema)),
  on_timeout: OnTimeoutSchema,
  paused_at: Type.Optional(Type.String({ format: 'date-time' })),
  pause_mode: Type.Optional(Type.Union([Type.Literal('memory'), Type.Literal('files')], { description: 'while paused: memory (its variables and processes come back) or files (only its workspace files do)' })),
  state_lost: Type.Optional(Type.Boolean({ description: 'in a resume\'s answer: its kernels start afresh (a pause that kept only the files)' }))
})
export type Sandbox = Static<typeof SandboxSchema>

export const SandboxListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(SandboxSchema) })

export const ExecuteSchema = Type.Object({
  code: Type.String(),
  language: Type.Optional(Language),
  timeout_ms: Type.Optional(Type.Integer({ minimum: 1 })),
  stream: Type.Optional(Type.Boolean())
}, { additionalProperties: false })
export type ExecuteRequest = Static<typeof ExecuteSchema>

export const MimeBundle = Type.Record(Type.String(), Type.String(), { description: 'by MIME type: text/plain, text/html, image/png (base64)' })

export const ExecutionErrorSchema = Type.Object({
  name: Type.String(),
  value: Type.String(),
  traceback: Type.Array(Type.String()),
  code: Type.Optional(Type.String({ description: 'execution_timeout, kernel_died, ...' })),
  state_lost: Type.Optional(Type.Boolean())
})

export const ExecutionSchema = Type.Object({
  sandbox_id: Type.String(),
  language: Language,
  stdout: Type.String(),
  stderr: Type.String(),
  results: Type.Array(Type.Object({ type: Type.Union([Type.Literal('result'), Type.Literal('display')]), data: MimeBundle })),
  error: Type.Union([ExecutionErrorSchema, Type.Null()]),
  execution_count: Type.Integer(),
  duration_ms: Type.Number(),
  exit_code: Type.Optional(Type.Integer({ description: 'the process exit code (shell and the fresh-process languages); non-zero without an `error` when the program failed on its own terms, e.g. a compile error' })),
  state_lost: Type.Boolean()
})
export type Execution = Static<typeof ExecutionSchema>

/** One event of a running execution, as the agent emits it (and SSE forwards it). */
export type ExecutionEvent =
  | { type: 'start', execution_count: number }
  | { type: 'stdout' | 'stderr', text: string }
  | { type: 'result' | 'display', data: Record<string, string> }
  | { type: 'error', name: string, value: string, traceback: string[], code?: string, state_lost?: boolean }
  | { type: 'end', status: 'ok' | 'error', execution_count: number, duration_ms: number, state_lost: boolean, exit_code?: number }

export const FileEntrySchema = Type.Object({
  name: Type.String(),
  path: Type.String(),
  type: Type.Union([Type.Literal('file'), Type.Literal('directory'), Type.Literal('symlink')]),
  size: Type.Integer(),
  modified: Type.Number({ description: 'seconds since the epoch' })
})
export type FileEntry = Static<typeof FileEntrySchema>

export const FilePathSchema = Type.Object({ id: Type.String({ maxLength: 64 }), '*': Type.String({ maxLength: 1024 }) })
export const FileListSchema = Type.Object({ object: Type.Literal('list'), path: Type.String(), data: Type.Array(FileEntrySchema) })

/** The sandbox host's load, as /v1/ready and /v1/stats show it. */
export const HostStatusSchema = Type.Object({
  name: Type.String(),
  status: Type.Union([Type.Literal('up'), Type.Literal('down')]),
  live: Type.Integer({ description: 'sandboxes on this host' }),
  memory_used_mb: Type.Integer(),
  warm: Type.Integer(),
  creating: Type.Integer(),
  queued: Type.Integer(),
  paused: Type.Integer({ description: 'paused sandboxes on this host (not in live: they hold no memory)' }),
  pause_mode: Type.Union([Type.Literal('memory'), Type.Literal('files'), Type.Literal('unknown')], { description: 'how this host pauses sandboxes: memory (a checkpoint: variables and processes come back), files (the workspace only), unknown (not tried yet: found out at the first pause, or at start with SANDBOX_IDLE_ACTION=pause)' }),
  pause_note: Type.Optional(Type.String({ description: 'why pauses here do not keep memory (or not every time)' }))
}, { description: 'one Docker host (SANDBOX_DOCKER_HOSTS)' })

export const PoolStatusSchema = Type.Object({
  warm: Type.Integer({ description: 'warm containers ready to hand out' }),
  creating: Type.Integer({ description: 'containers starting now' }),
  size: Type.Integer({ description: 'POOL_SIZE: the floor of the warm pool' }),
  target: Type.Integer({ description: 'warm containers the elastic pool aims for now' }),
  max: Type.Integer({ description: 'POOL_MAX' }),
  queued: Type.Integer({ description: 'requests waiting for a container start' }),
  concurrency: Type.Integer({ description: 'SANDBOX_START_CONCURRENCY' }),
  avg_start_ms: Type.Integer({ description: 'recent container start time' }),
  agent_channel: Type.Union([Type.Literal('socket'), Type.Literal('attach')], { description: 'how new sandboxes are talked to (SANDBOX_AGENT_CHANNEL)' }),
  live: Type.Integer({ description: 'sandboxes this process is attached to' }),
  busy: Type.Integer({ description: 'of those, running code now' })
})

export const CapacityStatusSchema = Type.Object({
  live: Type.Integer({ description: 'sandboxes on this Docker host, all keys (as of the last creation or reaper round)' }),
  max: Type.Integer({ description: 'MAX_SANDBOXES' }),
  paused: Type.Integer({ description: 'paused sandboxes (not in live or the memory used: they hold none)' }),
  creating: Type.Integer({ description: 'creations under way in this process' }),
  memory_used_mb: Type.Integer({ description: "the sum of live sandboxes' memory limits" }),
  memory_budget_mb: Type.Integer({ description: 'SANDBOX_MEMORY_BUDGET_MB' })
})

export const RecoveryStatusSchema = Type.Object({
  state: Type.Union([Type.Literal('pending'), Type.Literal('running'), Type.Literal('done'), Type.Literal('failed')]),
  total: Type.Integer({ description: 'stored sandboxes to re-adopt' }),
  adopted: Type.Integer(),
  removed: Type.Integer({ description: 'records whose container was gone' }),
  orphans_removed: Type.Integer()
}, { description: "start-up's re-adoption of the containers stored sandboxes reference, which runs in the background" })

export const CreateSnapshotSchema = Type.Object({ name: SnapshotName }, { additionalProperties: false })
export const SnapshotParamsSchema = Type.Object({ name: SnapshotName })

/** What the store keeps about a snapshot. */
export interface SnapshotRecord {
  name: string
  owner: string
  /** The Docker host whose volume holds its files (absent: the first). */
  host?: string
  volume: string
  created_at: string
  size_bytes: number
  language: Language
  source_sandbox: string
}

export const SnapshotSchema = Type.Object({
  object: Type.Literal('snapshot'),
  name: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  size_bytes: Type.Integer({ description: 'the workspace as kept (a tar stream)' }),
  language: Language,
  source_sandbox: Type.String({ description: 'the sandbox it was taken from (which may be gone)' }),
  keeps: Type.Literal('files', { description: 'a snapshot keeps the workspace files; kernels of a sandbox started from it start afresh' })
})
export const SnapshotListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(SnapshotSchema) })

export const ForkSchema = Type.Object({
  count: Type.Integer({ minimum: 1, description: 'how many sandboxes (at most SANDBOX_MAX_FORK)' })
}, { additionalProperties: false })
export const ForkResultSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(Type.Object({
    sandbox: Type.Optional(SandboxSchema),
    error: Type.Optional(Type.Object({ message: Type.String(), type: Type.String(), code: Type.String() }))
  }), { description: 'one entry per sandbox asked for: the sandbox, or why it could not be made (429 and 503 reasons included)' })
})

/** What the store keeps about a named volume. */
export interface VolumeRecord {
  name: string
  owner: string
  /** Its image and mount point on the Docker host are named by this. */
  id: string
  size_mb: number
  created_at: string
}

export const CreateVolumeSchema = Type.Object({
  name: VolumeName,
  size_mb: Type.Integer({ minimum: 1, description: 'its size cap: code that writes more gets ENOSPC (at most SANDBOX_VOLUME_MAX_MB)' })
}, { additionalProperties: false })
export const VolumeParamsSchema = Type.Object({ name: VolumeName })
export const VolumeSchema = Type.Object({
  object: Type.Literal('volume'),
  name: Type.String(),
  size_mb: Type.Integer(),
  used_bytes: Type.Integer({ description: 'what its files take on the host now' }),
  created_at: Type.String({ format: 'date-time' })
})
export const VolumeListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(VolumeSchema) })

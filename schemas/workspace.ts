// The workspace routes' wire format (routes/processes.ts, routes/ports.ts): commands, processes, terminals, watchers
// and ports of a sandbox.
import { Type, type Static } from 'typebox'

const MAX_PID = 4_194_304 // Linux's pid_max ceiling

export const PidParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }), pid: Type.Integer({ minimum: 1, maximum: MAX_PID }) })
export const PortParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }), port: Type.Integer({ minimum: 1, maximum: 65535 }) })

const Env = Type.Record(Type.String({ minLength: 1, maxLength: 256, pattern: '^[^=\\u0000]+$' }), Type.String({ maxLength: 32768 }), { maxProperties: 256 })

export const CommandSchema = Type.Object({
  cmd: Type.Union([
    Type.String({ minLength: 1, maxLength: 100_000, description: 'a shell command line (run by bash -c)' }),
    Type.Array(Type.String({ minLength: 1, maxLength: 100_000 }), { minItems: 1, maxItems: 1000, description: 'argv, run as is' })
  ]),
  cwd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'absolute, or relative to /home/user (the default)' })),
  env: Type.Optional(Env),
  user: Type.Optional(Type.Literal('user', { description: 'commands run as the sandbox user (uid 1000), like the kernels; root is not offered' })),
  background: Type.Optional(Type.Boolean({ default: false, description: 'answer at once with the process (201), instead of at its end' })),
  input: Type.Optional(Type.String({ maxLength: 1024 * 1024, description: 'foreground: written to its stdin, which then closes' })),
  stdin: Type.Optional(Type.Boolean({ description: 'background: keep a pipe to its stdin open for POST .../stdin (else it reads /dev/null)' })),
  pty: Type.Optional(Type.Object({ cols: Type.Integer({ minimum: 1, maximum: 1000 }), rows: Type.Integer({ minimum: 1, maximum: 1000 }) }, { additionalProperties: false, description: 'background: run it on a terminal of this size (its output is the stream pty; stdin is what is typed, Ctrl-C interrupts)' })),
  timeout_ms: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 24 * 3600 * 1000, description: 'SIGTERM, then SIGKILL, after this long. Foreground: default EXECUTION_TIMEOUT_MS, at most MAX_EXECUTION_TIMEOUT_MS; background: default none (0)' })),
  tag: Type.Optional(Type.String({ maxLength: 256, description: 'a label kept with the process' }))
})
export type CommandBody = Static<typeof CommandSchema>

const ExitFields = {
  exit_code: Type.Integer({ description: 'the exit status; 128 + the signal when a signal ended it' }),
  signal: Type.Union([Type.String(), Type.Null()], { description: 'the signal that ended it (SIGKILL, ...)' }),
  status: Type.Union([Type.Literal('exited'), Type.Literal('killed'), Type.Literal('timeout')]),
  duration_ms: Type.Number()
}

export const CommandResultSchema = Type.Object({
  pid: Type.Integer(),
  ...ExitFields,
  stdout: Type.String(),
  stderr: Type.String(),
  truncated: Type.Boolean({ description: 'the output passed SANDBOX_OUTPUT_LIMIT; the rest was dropped' })
})

export const ProcessSchema = Type.Object({
  pid: Type.Integer(),
  cmd: Type.Array(Type.String()),
  tag: Type.Union([Type.String(), Type.Null()]),
  pty: Type.Boolean({ description: 'whether it runs in a terminal' }),
  started_at: Type.String({ format: 'date-time' }),
  running: Type.Boolean(),
  output_bytes: Type.Integer({ description: 'bytes of output so far (offsets count these)' }),
  exit_code: Type.Optional(ExitFields.exit_code),
  signal: Type.Optional(ExitFields.signal),
  status: Type.Optional(ExitFields.status),
  duration_ms: Type.Optional(Type.Number()),
  ended_at: Type.Optional(Type.String({ format: 'date-time' }))
})
export type ProcessView = Static<typeof ProcessSchema>

export const ProcessListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(ProcessSchema) })

export const OutputQuerySchema = Type.Object({
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'the byte offset to start at (SSE: or the Last-Event-ID header)' })),
  tail: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 * 1024 * 1024, description: 'start this many bytes before the end instead' })),
  follow: Type.Optional(Type.Boolean({ description: 'stream live until the process ends (SSE); the default with Accept: text/event-stream' })),
  encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { default: 'utf8' }))
})

export const OutputChunkSchema = Type.Object({
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr'), Type.Literal('pty')]),
  offset: Type.Integer(),
  text: Type.Optional(Type.String()),
  data: Type.Optional(Type.String({ description: 'base64 (encoding=base64)' }))
})

export const OutputSchema = Type.Object({
  pid: Type.Integer(),
  offset: Type.Integer({ description: 'where the kept output starts (older output is no longer kept)' }),
  end: Type.Integer({ description: 'the offset after the last byte' }),
  output: Type.Array(OutputChunkSchema),
  process: ProcessSchema
})

export const StdinSchema = Type.Object({
  data: Type.String({ maxLength: 1024 * 1024 }),
  encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { default: 'utf8' })),
  eof: Type.Optional(Type.Boolean({ description: 'close its stdin after the data (a terminal gets Ctrl-D)' }))
})

export const SIGNAL_NAMES = ['SIGINT', 'SIGTERM', 'SIGKILL', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGSTOP', 'SIGCONT', 'SIGWINCH'] as const
export const SignalSchema = Type.Object({ signal: Type.Union(SIGNAL_NAMES.map(s => Type.Literal(s))) })

export const ResizeSchema = Type.Object({ cols: Type.Integer({ minimum: 1, maximum: 1000 }), rows: Type.Integer({ minimum: 1, maximum: 1000 }) })

export const TerminalQuerySchema = Type.Object({
  pid: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PID, description: 'reattach to this terminal (its recent screen is replayed)' })),
  cmd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'the program to run (default bash -i), split on spaces' })),
  cwd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  cols: Type.Integer({ minimum: 1, maximum: 1000, default: 80 }),
  rows: Type.Integer({ minimum: 1, maximum: 1000, default: 24 })
})

export const WatchQuerySchema = Type.Object({
  path: Type.String({ default: '', maxLength: 1024, description: 'a directory of the workspace (relative to /home/user)' }),
  recursive: Type.Boolean({ default: false })
})

export const PortUrlBodySchema = Type.Object({
  expires_in: Type.Integer({ minimum: 1, maximum: 30 * 24 * 3600, default: 3600, description: 'seconds (at most PORT_URL_MAX_TTL_S)' })
})
export const PortUrlSchema = Type.Object({
  url: Type.String({ description: 'usable without an API key (a browser can open it) until it expires' }),
  path: Type.String({ description: 'the same URL\'s path, for a client that knows the server\'s address better than it does' }),
  host_url: Type.Optional(Type.String({ description: 'with PORT_HOST_DOMAIN: the app at the root of a host name of its own; opening it sets a cookie for that host' })),
  expires_at: Type.String({ format: 'date-time' })
})

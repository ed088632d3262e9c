// The protocol between the server and the in-container agent (sandbox/agent.py), typed once: JSON lines both ways,
// requests carry an `op` and an `id`, and every event answering a request carries its `id` (`ready` carries none).
// scripts/agent-schema.ts writes this as JSON Schema to sandbox/protocol.schema.json, which the agent cites; with
// AGENT_PROTOCOL_CHECK=1 (the tests) AgentClient checks every event it receives against AgentEventSchema.
import { Type, type Static } from 'typebox'

const KernelLanguage = Type.Union([Type.Literal('python'), Type.Literal('javascript'), Type.Literal('shell'), Type.Literal('r')])
const Path = Type.String({ description: 'relative to the workspace (/home/user)' })

/** Every request, by op: its fields besides `op` and `id`. */
export const AgentRequests = {
  ping: Type.Object({}),
  env: Type.Object({
    env: Type.Record(Type.String(), Type.String()),
    merge: Type.Optional(Type.Boolean({ description: 'add to the environment (and drop `unset`), and leave running kernels as they are: what starts later sees it' })),
    unset: Type.Optional(Type.Array(Type.String()))
  }, { description: 'the environment of kernels and processes: replaced, and the kernels restart with it; or merged' }),
  execute: Type.Object({ language: KernelLanguage, code: Type.String(), timeout_ms: Type.Number(), max_output_bytes: Type.Number(), kernel: Type.Optional(Type.String({ description: 'a named kernel (kernel_open) instead of the language\'s default one' })) }),
  interrupt: Type.Object({}),
  egress: Type.Object({ ca: Type.Optional(Type.String({ description: 'the deployment CA (PEM): written with the system CAs to /tmp/.egress-ca/ca-bundle.pem' })) }, { description: 'start the relay to the egress proxy (127.0.0.1:3128 inside)' }),
  restart: Type.Object({ language: Type.Optional(KernelLanguage), kernel: Type.Optional(Type.String()) }, { description: 'fresh kernels; `language` starts warm; with `kernel`, that one alone' }),
  kernel_open: Type.Object({ kernel: Type.String({ description: '<language>:<name>' }), language: KernelLanguage, cwd: Type.Optional(Type.String()) }, { description: 'start a named kernel (an E2B code context) in `cwd`' }),
  kernel_close: Type.Object({ kernel: Type.String() }),
  kernel_list: Type.Object({}, { description: 'the live kernels (answers kernels)' }),
  list: Type.Object({ path: Path, depth: Type.Optional(Type.Integer({ minimum: 1, description: 'levels of subdirectories to descend (1: the directory alone)' })) }),
  stat: Type.Object({ path: Path }, { description: 'one entry (answers files with it)' }),
  mkdir: Type.Object({ path: Path }, { description: 'a directory and its parents (done with created: false when it was there)' }),
  move: Type.Object({ source: Path, destination: Path }, { description: 'rename (answers files with the moved entry)' }),
  read: Type.Object({ path: Path }),
  write_open: Type.Object({ path: Path }),
  unpack_open: Type.Object({ path: Path }, { description: 'like write_open, but the chunks are a tar stream unpacked into this directory (as the user)' }),
  write_chunk: Type.Object({ upload: Type.String({ description: 'the id of the write_open (or unpack_open) request' }), data: Type.String({ description: 'base64' }) }),
  write_close: Type.Object({ upload: Type.String(), abort: Type.Optional(Type.Boolean()) }),
  delete: Type.Object({ path: Path }),
  pack: Type.Object({}, { description: 'the workspace as a tar stream (file_chunk events, then done with its size): a pause that keeps files' }),
  suspend: Type.Object({}, { description: 'before a checkpoint: the agent closes its socket channels and listener, and listens again once the file `resume` appears in its directory' }),
  spawn: Type.Object({
    cmd: Type.Array(Type.String(), { minItems: 1, description: 'argv, run as the user' }),
    cwd: Type.Optional(Type.String({ description: 'absolute, or relative to the workspace' })),
    env: Type.Optional(Type.Record(Type.String(), Type.String())),
    stdin: Type.Optional(Type.Boolean({ description: 'keep a pipe to its stdin open (else /dev/null)' })),
    pty: Type.Optional(Type.Object({ cols: Type.Integer(), rows: Type.Integer() }, { description: 'run it in a terminal of this size' })),
    timeout_ms: Type.Optional(Type.Number({ description: 'SIGTERM, then SIGKILL, after this long (0: never)' })),
    keep_bytes: Type.Optional(Type.Integer({ description: 'how much of its latest output is kept for followers' })),
    tag: Type.Optional(Type.String()),
    max_processes: Type.Optional(Type.Integer()),
    max_terminals: Type.Optional(Type.Integer()),
    follow: Type.Optional(Type.Boolean({ description: 'follow it at once: the answer is proc_follow (with its pid), then its output and proc_exit, as proc_follow from offset 0' })),
    follow_limit: Type.Optional(Type.Integer({ description: 'with follow: the most output bytes sent' }))
  }, { description: 'start a command (answers spawned with its pid, or with follow as proc_follow does)' }),
  proc_list: Type.Object({}),
  proc_follow: Type.Object({
    pid: Type.Integer(),
    offset: Type.Optional(Type.Integer()),
    tail: Type.Optional(Type.Integer({ description: 'start this many bytes before the end instead' })),
    limit: Type.Optional(Type.Integer({ description: 'the most output bytes this follower gets' }))
  }, { description: 'a process\'s kept output from an offset, then live output until it exits (proc_exit), or until proc_unfollow' }),
  proc_unfollow: Type.Object({ follow: Type.String({ description: 'the id of the proc_follow request' }) }),
  proc_input: Type.Object({ pid: Type.Integer(), data: Type.String({ description: 'base64' }), eof: Type.Optional(Type.Boolean()) }),
  proc_signal: Type.Object({ pid: Type.Integer(), signal: Type.String() }),
  proc_resize: Type.Object({ pid: Type.Integer(), cols: Type.Integer(), rows: Type.Integer() }),
  watch: Type.Object({ path: Path, recursive: Type.Optional(Type.Boolean()), max_watchers: Type.Optional(Type.Integer()) }, { description: 'file events under a directory (watching, then fs_event until unwatch)' }),
  unwatch: Type.Object({ watch: Type.String({ description: 'the id of the watch request' }) }),
  connect: Type.Object({ port: Type.Integer() }, { description: 'on a connection of its own: after the answer (done or error), the connection carries the bytes of a TCP connection to this port inside the sandbox' })
}
export type AgentOp = keyof typeof AgentRequests
export type AgentRequest<O extends AgentOp> = Static<typeof AgentRequests[O]>

const Id = Type.Optional(Type.String())
const event = <T extends string, P extends Parameters<typeof Type.Object>[0]>(type: T, props: P, description: string) =>
  Type.Object({ id: Id, type: Type.Literal(type), ...props }, { description })

const FileEntry = Type.Object({
  name: Type.String(),
  path: Type.String(),
  type: Type.Union([Type.Literal('file'), Type.Literal('directory'), Type.Literal('symlink')]),
  size: Type.Integer(),
  modified: Type.Number(),
  mode: Type.Optional(Type.Integer({ description: 'permission bits' })),
  permissions: Type.Optional(Type.String({ description: 'as ls shows them' })),
  owner: Type.Optional(Type.String()),
  group: Type.Optional(Type.String()),
  target: Type.Optional(Type.String({ description: 'where a symlink points' }))
})

const ExitFields = {
  exit_code: Type.Integer({ description: '128 + the signal when killed by one' }),
  signal: Type.Union([Type.String(), Type.Null()]),
  status: Type.Union([Type.Literal('exited'), Type.Literal('killed'), Type.Literal('timeout')]),
  duration_ms: Type.Number(),
  ended_at: Type.Number()
}

const ProcessInfo = Type.Object({
  pid: Type.Integer(),
  cmd: Type.Array(Type.String()),
  tag: Type.Union([Type.String(), Type.Null()]),
  pty: Type.Boolean(),
  started_at: Type.Number(),
  running: Type.Boolean(),
  output_bytes: Type.Integer(),
  exit_code: Type.Optional(ExitFields.exit_code),
  signal: Type.Optional(ExitFields.signal),
  status: Type.Optional(ExitFields.status),
  duration_ms: Type.Optional(ExitFields.duration_ms),
  ended_at: Type.Optional(ExitFields.ended_at)
})

/** Every event the agent sends. */
export const AgentEventSchema = Type.Union([
  event('ready', {}, 'the agent and its python kernel are up (no id)'),
  event('pong', {}, 'answers ping'),
  event('done', { interrupted: Type.Optional(Type.Boolean()), size: Type.Optional(Type.Integer()), created: Type.Optional(Type.Boolean()) }, 'ends env, interrupt (interrupted: whether a run was), egress, restart, read, the writes (write_close: the size), delete, pack (the size) and suspend'),
  event('start', { execution_count: Type.Integer() }, 'an execution began'),
  event('stdout', { text: Type.String() }, 'output of the running code'),
  event('stderr', { text: Type.String() }, 'error output of the running code'),
  event('result', { data: Type.Record(Type.String(), Type.String()) }, 'the value of the last expression, by MIME type'),
  event('display', { data: Type.Record(Type.String(), Type.String()) }, 'a display (a plot), by MIME type'),
  event('error', {
    name: Type.String(),
    value: Type.Optional(Type.String()),
    traceback: Type.Optional(Type.Array(Type.String())),
    code: Type.Optional(Type.String()),
    state_lost: Type.Optional(Type.Boolean())
  }, 'the code raised, timed out or its kernel died (during an execution); or the request failed (before its start)'),
  event('end', {
    status: Type.Union([Type.Literal('ok'), Type.Literal('error')]),
    execution_count: Type.Integer(),
    duration_ms: Type.Number(),
    state_lost: Type.Boolean(),
    exit_code: Type.Optional(Type.Integer())
  }, 'ends an execution'),
  event('files', { entries: Type.Array(FileEntry) }, 'answers list, stat and move'),
  event('kernels', { kernels: Type.Array(Type.Object({ kernel: Type.String(), language: KernelLanguage, cwd: Type.String() })) }, 'answers kernel_list'),
  event('file_start', { size: Type.Integer() }, 'a read opened the file'),
  event('file_chunk', { data: Type.String({ description: 'base64' }) }, 'the next part of a read file (or of a pack)'),
  event('spawned', { pid: Type.Integer() }, 'answers spawn'),
  event('processes', { processes: Type.Array(ProcessInfo) }, 'answers proc_list'),
  event('proc_follow', { pid: Type.Integer(), offset: Type.Integer({ description: 'where this follower\'s output starts' }), end: Type.Integer(), pty: Type.Boolean() }, 'a follow began'),
  event('proc_output', {
    pid: Type.Integer(),
    stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr'), Type.Literal('pty')]),
    offset: Type.Integer(),
    data: Type.String({ description: 'base64' }),
    truncated: Type.Optional(Type.Boolean({ description: 'the follower\'s limit: no more output follows' }))
  }, 'output of a followed process'),
  event('proc_exit', { pid: Type.Integer(), ...ExitFields }, 'a followed process ended'),
  event('watching', { path: Type.String() }, 'a watch began'),
  event('fs_event', {
    kind: Type.Union(['create', 'write', 'remove', 'rename', 'chmod', 'overflow'].map(k => Type.Literal(k))),
    path: Type.String(),
    is_dir: Type.Boolean()
  }, 'something changed under a watched directory')
])
export type AgentEvent = Static<typeof AgentEventSchema>
export type AgentEventOf<T extends AgentEvent['type']> = Extract<AgentEvent, { type: T }>

/** The whole protocol as one JSON Schema document (what scripts/agent-schema.ts writes next to the agent). */
export function agentProtocolSchema (): Record<string, unknown> {
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title: 'interpreter-server agent protocol',
    description: 'JSON lines between the server and sandbox/agent.py. Generated from schemas/agent.ts by scripts/agent-schema.ts: do not edit.',
    requests: Object.fromEntries(Object.entries(AgentRequests).map(([op, schema]) => [op, schema])),
    events: AgentEventSchema
  }
}

import { randomUUID } from 'node:crypto'
import type { LanguageSpec } from '../sandbox/languages.js'
import type { ExecutionEvent } from '../../schemas/sandboxes.js'

/**
 * The Jupyter messaging protocol (5.3, JSON form) over our executions: kernel specs for the image's languages, the
 * two WebSocket framings clients speak, and the messages an execution turns into.
 */

/** The subprotocol `@jupyterlab/services` offers first; without it, messages are JSON text frames. */
export const JUPYTER_V1_PROTOCOL = 'v1.kernel.websocket.jupyter.org'
export const PROTOCOL_VERSION = '5.3'

export interface JupyterHeader {
  msg_id: string
  msg_type: string
  username: string
  session: string
  date: string
  version: string
}

export interface JupyterMessage {
  header: JupyterHeader
  parent_header: Partial<JupyterHeader>
  metadata: Record<string, unknown>
  content: Record<string, unknown>
  channel: string
  buffers?: unknown[]
  /** Copies of header.msg_id and header.msg_type, as jupyter_server sends them (Open WebUI reads only these). */
  msg_id?: string
  msg_type?: string
}

/** What a kernel spec says about the language (kernel_info_reply's language_info); versions are Debian bookworm's. */
interface KernelSpecInfo {
  name: string
  language: string
  version: string
  mimetype: string
  file_extension: string
  pygments_lexer?: string
  codemirror_mode?: string | Record<string, unknown>
}

const INFO: Record<string, KernelSpecInfo> = {
  python: { name: 'python3', language: 'python', version: '3.11', mimetype: 'text/x-python', file_extension: '.py', pygments_lexer: 'ipython3', codemirror_mode: { name: 'ipython', version: 3 } },
  javascript: { name: 'javascript', language: 'javascript', version: '18', mimetype: 'application/javascript', file_extension: '.js', codemirror_mode: 'javascript' },
  shell: { name: 'bash', language: 'bash', version: '5.2', mimetype: 'text/x-sh', file_extension: '.sh', codemirror_mode: 'shell' },
  r: { name: 'ir', language: 'R', version: '4.2', mimetype: 'text/x-r-source', file_extension: '.r', codemirror_mode: 'r' }
}

/** A Jupyter kernel spec: one per language this server runs (stateful kernels keep variables; the others run each cell as a fresh program). */
export interface KernelSpec { name: string, language: LanguageSpec, info: KernelSpecInfo }

export function kernelSpecs (languages: LanguageSpec[]): KernelSpec[] {
  return languages.map(language => {
    const known = INFO[language.id]
    const info = known ?? { name: language.id, language: language.id, version: '', mimetype: 'text/plain', file_extension: `.${language.file.split('.').pop()!}` }
    return { name: info.name, language, info }
  })
}

/** The kernelspec model of GET /api/kernelspecs. */
export function specModel (spec: KernelSpec): Record<string, unknown> {
  const stateful = Boolean(spec.language.kernel)
  return {
    name: spec.name,
    spec: {
      argv: [],
      display_name: stateful ? spec.language.name : `${spec.language.name}, each cell a fresh program`,
      language: spec.info.language,
      interrupt_mode: 'signal',
      env: {},
      metadata: { interpreter_server: { language: spec.language.id, stateful } }
    },
    resources: {}
  }
}

/** Reads a frame in the socket's framing; null for anything that is not a message (ignored, the socket stays usable). */
export function decodeFrame (data: Buffer, isBinary: boolean, protocol: string): JupyterMessage | null {
  try {
    let message: unknown
    if (protocol === JUPYTER_V1_PROTOCOL) {
      if (!isBinary) return null
      message = decodeV1(data)
    } else if (!isBinary) {
      message = JSON.parse(data.toString('utf8'))
    } else {
      message = decodeDefaultBinary(data)
    }
    const m = message as Partial<JupyterMessage>
    if (!m || typeof m !== 'object' || !m.header || typeof m.header.msg_type !== 'string' || typeof m.header.msg_id !== 'string') return null
    return {
      header: m.header,
      parent_header: (m.parent_header ?? {}),
      metadata: m.metadata && typeof m.metadata === 'object' ? m.metadata : {},
      content: m.content && typeof m.content === 'object' ? m.content : {},
      channel: typeof m.channel === 'string' ? m.channel : 'shell'
    }
  } catch {
    return null
  }
}

/** Writes a message in the socket's framing: v1 binary (u64-LE offsets, then channel, header, parent, metadata, content), or JSON text. */
export function encodeFrame (message: JupyterMessage, protocol: string): string | Buffer {
  if (protocol !== JUPYTER_V1_PROTOCOL) return JSON.stringify(message)
  const parts = [message.channel, message.header, message.parent_header, message.metadata, message.content]
    .map((p, i) => Buffer.from(i === 0 ? String(p) : JSON.stringify(p), 'utf8'))
  const count = parts.length + 1
  const head = Buffer.alloc(8 * (1 + count))
  head.writeBigUInt64LE(BigInt(count), 0)
  let offset = head.length
  head.writeBigUInt64LE(BigInt(offset), 8)
  parts.forEach((part, i) => {
    offset += part.length
    head.writeBigUInt64LE(BigInt(offset), 8 * (i + 2))
  })
  return Buffer.concat([head, ...parts])
}

function decodeV1 (data: Buffer): unknown {
  const count = Number(data.readBigUInt64LE(0))
  if (count < 6 || 8 * (count + 1) > data.length) throw new Error('bad offsets')
  const offsets = Array.from({ length: count }, (_, i) => Number(data.readBigUInt64LE(8 * (i + 1))))
  const part = (i: number) => data.subarray(offsets[i], offsets[i + 1]).toString('utf8')
  return { channel: part(0), header: JSON.parse(part(1)), parent_header: JSON.parse(part(2)), metadata: JSON.parse(part(3)), content: JSON.parse(part(4)) }
}

/** The default protocol's binary frame (a message with buffers): u32-BE count and offsets, the first part JSON. */
function decodeDefaultBinary (data: Buffer): unknown {
  const count = data.readUInt32BE(0)
  if (count < 1) throw new Error('no parts')
  const start = data.readUInt32BE(4)
  const end = count > 1 ? data.readUInt32BE(8) : data.length
  return JSON.parse(data.subarray(start, end).toString('utf8'))
}

/** Builds the messages of one kernel: a stable `session` in every header (clients drop messages from another session). */
export class MessageFactory {
  constructor (private readonly session: string) {}

  make (channel: string, msgType: string, content: Record<string, unknown>, parent: Partial<JupyterHeader> = {}, metadata: Record<string, unknown> = {}): JupyterMessage {
    const msgId = randomUUID()
    return {
      header: { msg_id: msgId, msg_type: msgType, username: 'kernel', session: this.session, date: new Date().toISOString(), version: PROTOCOL_VERSION },
      msg_id: msgId,
      msg_type: msgType,
      parent_header: parent,
      metadata,
      content,
      channel,
      buffers: []
    }
  }

  status (state: 'busy' | 'idle' | 'starting' | 'restarting', parent: Partial<JupyterHeader> = {}): JupyterMessage {
    return this.make('iopub', 'status', { execution_state: state }, parent)
  }
}

export function kernelInfo (spec: KernelSpec): Record<string, unknown> {
  const { info, language } = spec
  return {
    status: 'ok',
    protocol_version: PROTOCOL_VERSION,
    implementation: 'interpreter-server',
    implementation_version: '1',
    language_info: {
      name: info.language,
      version: info.version,
      mimetype: info.mimetype,
      file_extension: info.file_extension,
      ...(info.pygments_lexer ? { pygments_lexer: info.pygments_lexer } : {}),
      ...(info.codemirror_mode ? { codemirror_mode: info.codemirror_mode } : {})
    },
    banner: `${language.name} in an Interpreter Server sandbox${language.kernel ? '' : ' (each cell runs as a fresh program; files persist)'}`,
    help_links: [],
    debugger: false
  }
}

/** The iopub messages (type and content) that one execution event becomes; `executionCount` is the run's. */
export function iopubFor (event: ExecutionEvent, executionCount: number, code: string, silent: boolean): Array<[string, Record<string, unknown>]> {
  switch (event.type) {
    case 'start': return silent ? [] : [['execute_input', { code, execution_count: event.execution_count }]]
    case 'stdout': case 'stderr': return [['stream', { name: event.type, text: event.text }]]
    case 'result': return silent ? [] : [['execute_result', { execution_count: executionCount, data: event.data, metadata: {} }]]
    case 'display': return [['display_data', { data: event.data, metadata: {}, transient: {} }]]
    case 'error': return [['error', errorContent(event)]]
    default: return []
  }
}

export function errorContent (error: { name: string, value: string, traceback?: string[] }): Record<string, unknown> {
  const traceback = (error.traceback ?? []).length ? error.traceback! : [`${error.name}: ${error.value}`]
  return { ename: error.name, evalue: error.value, traceback }
}

/** The minimal reply to a shell request this kernel does not implement, so a client waiting on it is not left hanging. */
export function fallbackReply (msgType: string, content: Record<string, unknown>): Record<string, unknown> | null {
  switch (msgType) {
    case 'complete_request': {
      const pos = typeof content.cursor_pos === 'number' ? content.cursor_pos : 0
      return { status: 'ok', matches: [], cursor_start: pos, cursor_end: pos, metadata: {} }
    }
    case 'inspect_request': return { status: 'ok', found: false, data: {}, metadata: {} }
    case 'is_complete_request': return { status: 'unknown' }
    case 'history_request': return { status: 'ok', history: [] }
    case 'comm_info_request': return { status: 'ok', comms: {} }
    default:
      return msgType.endsWith('_request') ? { status: 'error', ename: 'NotImplementedError', evalue: `${msgType} is not supported by this kernel`, traceback: [] } : null
  }
}

import type { FastifyPluginAsync } from 'fastify'
import type { WebSocket } from 'ws'
import Value from 'typebox/value'
import { ClientMessageSchema, type ClientMessage, type ServerMessage } from '../schemas/ws.js'
import type { Session } from '../schemas/sessions.js'
import { sseEvents } from './sse.js'
import { heartbeat } from '../plugins/route-kit.js'
import { AppError } from '../services/errors.js'
import { runError } from '../services/interpreter/runs.js'

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

function invalid (raw: unknown): AppError | null {
  const [error] = Value.Errors(ClientMessageSchema, raw) // the first one
  if (!error) return null
  const type = (raw as { type?: unknown })?.type
  const known = ['hello', 'chat', 'execute', 'confirm', 'interrupt', 'resume', 'ping']
  if (typeof type !== 'string' || !known.includes(type)) return new AppError(400, 'invalid_message', `message type must be one of ${known.join(', ')}`)
  return new AppError(400, 'invalid_message', `${type}${error.instancePath.replace(/\//g, '.')} ${error.message}`.replace(/^(\w+) /, '$1: '))
}

/**
 * GET /v1/ws: one socket per client, attached to one session. Every event of the session's log reaches the
 * socket once, numbered; `resume {after}` replays from any id. Heartbeat pings drop silent peers; a slow reader
 * stops pulling from the log (nothing is buffered without bound) and is closed if it never drains.
 */
const routes: FastifyPluginAsync = async (app) => {
  const { sessions, runs, events } = app
  const c = app.config
  app.get('/ws', { websocket: true, preHandler: app.sockets.check, schema: { hide: true } as object }, (socket: WebSocket, request) => {
    const principal = request.principal
    app.sockets.hold(principal, socket)
    const log = request.log.child({ ws: true })
    let session: Session | null = null
    let follower: AbortController | null = null
    let queue: Promise<void> = Promise.resolve()

    const send = (message: ServerMessage) => {
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message))
    }
    const fail = (err: unknown, of?: string) => {
      const e = runError(err)
      send({ type: 'error', error: { message: e.message, type: e.type, code: e.code, ...e.extra }, ...(of ? { of } : {}) })
    }

    /** Streams the log after `after` to this socket, pausing while the socket has too much unsent data. */
    const followFrom = (after: string | undefined) => {
      follower?.abort()
      const controller = new AbortController()
      follower = controller
      const sessionId = session!.id
      void (async () => {
        try {
          for await (const logged of events.follow(sessionId, after, controller.signal)) {
            let waited = 0
            while (socket.bufferedAmount > c.WS_MAX_BUFFERED_BYTES && !controller.signal.aborted) {
              if (waited >= c.WS_SLOW_CLOSE_MS) {
                log.warn({ buffered: socket.bufferedAmount }, 'closing a socket that does not drain')
                socket.close(1013, 'slow consumer: reconnect and resume')
                return
              }
              await sleep(20)
              waited += 20
            }
            // An error and the done that follows it share their log entry, and so its id.
            for (const e of sseEvents(logged)) send({ type: 'event', id: logged.id, event: e.event, data: e.data })
          }
        } catch (err) {
          if (!controller.signal.aborted) log.warn({ err }, 'event follower failed')
        }
      })()
    }

    const needSession = () => {
      if (!session) throw new AppError(409, 'no_session', 'Send hello first')
      return session
    }

    const handle = async (message: ClientMessage) => {
      // Every action counts as a request would: against the key, and (chat, execute) against the session.
      if (message.type !== 'ping') await app.limitAction(principal, message.type === 'chat' || message.type === 'execute' ? session?.id : undefined)
      switch (message.type) {
        case 'ping': return send({ type: 'pong' })
        case 'hello': {
          session = message.session_id ? await sessions.get(message.session_id, principal) : await sessions.create(principal, {})
          const last = await events.lastId(session.id)
          send({ type: 'hello', session_id: session.id, last_event_id: last })
          return followFrom(last ?? undefined)
        }
        case 'resume': needSession(); return followFrom(message.after)
        case 'chat': {
          const current = needSession()
          const input = message.messages ?? (message.content !== undefined ? [{ role: 'user' as const, content: message.content }] : [])
          if (!input.length) throw new AppError(400, 'invalid_message', 'chat: send content or messages')
          app.models.get(message.model ?? current.settings.model)
          const run = await runs.start(current, input.map(m => ({ role: m.role, type: m.type ?? 'message', content: m.content, ...(m.format ? { format: m.format } : {}) })), { model: message.model, autoRun: message.auto_run, via: 'websocket' })
          return send({ type: 'ack', of: 'chat', run_id: run.id })
        }
        case 'execute': {
          const run = await runs.executeDirect(needSession(), message.language, message.code, { via: 'websocket' })
          return send({ type: 'ack', of: 'execute', run_id: run.id })
        }
        case 'confirm':
          await runs.confirm(needSession().id, message.code_id, message.approve)
          return send({ type: 'ack', of: 'confirm', code_id: message.code_id, approved: message.approve })
        case 'interrupt':
          return send({ type: 'ack', of: 'interrupt', interrupted: await runs.interrupt(needSession().id) })
      }
    }

    socket.on('message', (data, isBinary) => {
      let parsed: unknown
      try {
        parsed = isBinary ? undefined : JSON.parse(String(data))
      } catch {}
      const problem = parsed === undefined ? new AppError(400, 'invalid_message', 'messages must be JSON text') : invalid(parsed)
      if (problem) return fail(problem, typeof (parsed as { type?: unknown })?.type === 'string' ? (parsed as { type: string }).type : undefined)
      const message = parsed as ClientMessage
      // One message at a time, in order (hello must finish before the chat that follows it).
      queue = queue.then(() => handle(message)).catch((err) => fail(err, message.type))
    })

    heartbeat(socket, c.WS_PING_INTERVAL_MS, { onDead: () => log.info('dropping a WebSocket peer that stopped answering pings') })
    socket.on('close', () => { follower?.abort() })
  })
}

export default routes

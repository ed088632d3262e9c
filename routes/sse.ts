import type { LoggedEvent } from '../services/events.js'
import type { FastifyReply } from 'fastify'

export interface SseStream {
  /** Writes one event; false when the client's socket holds more than it has read (wait for `drained`). */
  send (event: string, data: unknown, id?: string): boolean
  comment (text: string): void
  end (): void
  /** Resolves true once the client has read what was queued, false if it left or `maxWaitMs` passed first. */
  drained (maxWaitMs: number): Promise<boolean>
  /** Bytes written but not yet taken by the client's socket. */
  readonly queued: number
  readonly closed: boolean
}

/** Takes over the reply and writes Server-Sent Events; writes after the client left are dropped. */
export function openSse (reply: FastifyReply): SseStream {
  const raw = reply.raw
  const headers = { ...reply.getHeaders() } as Record<string, string>
  reply.hijack()
  raw.writeHead(200, {
    ...headers,
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no'
  })
  raw.flushHeaders?.()
  let closed = false
  raw.on('close', () => { closed = true })
  return {
    get closed () { return closed },
    get queued () { return raw.writableLength },
    send (event, data, id) {
      if (closed) return true
      return raw.write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
    },
    drained (maxWaitMs) {
      if (closed) return Promise.resolve(false)
      if (!raw.writableNeedDrain) return Promise.resolve(true)
      return new Promise(resolve => {
        const done = (ok: boolean) => { clearTimeout(timer); raw.off('drain', onDrain); raw.off('close', onClose); resolve(ok) }
        const onDrain = () => done(true)
        const onClose = () => done(false)
        const timer = setTimeout(() => done(false), maxWaitMs)
        raw.on('drain', onDrain)
        raw.on('close', onClose)
      })
    },
    comment (text) {
      if (!closed) raw.write(`: ${text}\n\n`)
    },
    end () {
      if (!closed) raw.end()
      closed = true
    }
  }
}

/**
 * Sends a session's logged events to one SSE client at the pace it reads: the log is pulled only while the client
 * keeps up, so a client that never reads holds one socket buffer, not the whole stream. A client that reads nothing
 * for `slowCloseMs` is disconnected (it can resume with Last-Event-ID). Returns false when it was.
 */
export async function forwardEvents (sse: SseStream, source: AsyncIterable<LoggedEvent>, slowCloseMs: number): Promise<boolean> {
  for await (const logged of source) {
    let keepingUp = true
    for (const e of sseEvents(logged)) keepingUp = sse.send(e.event, e.data, e.id) && keepingUp
    if (!keepingUp && !(await sse.drained(slowCloseMs))) {
      sse.end()
      return false
    }
  }
  return true
}

/** A logged run event as the SSE events clients see: `message` (LMC chunks), `fallback`, `error`, `done`. */
export function sseEvents (logged: LoggedEvent): Array<{ event: string, data: unknown, id?: string }> {
  const e = logged.event
  switch (e.type) {
    case 'chunk': return [{ event: 'message', data: e.chunk, id: logged.id }]
    case 'run_start': return [{ event: 'run_start', data: { run_id: e.run_id, model: e.model }, id: logged.id }]
    case 'fallback': return [{ event: 'fallback', data: { run_id: e.run_id, from: e.from, to: e.to, reason: e.reason }, id: logged.id }]
    case 'run_end': {
      const done = { event: 'done', data: { run_id: e.run_id, session_id: e.session_id, usage: e.usage, finish_reason: e.finish_reason }, id: logged.id }
      return e.error ? [{ event: 'error', data: { error: e.error } }, done] : [done]
    }
  }
}

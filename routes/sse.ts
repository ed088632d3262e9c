import type { LoggedEvent } from '../services/events.js'
import type { FastifyReply } from 'fastify'

export interface SseStream {
  send (event: string, data: unknown, id?: string): void
  comment (text: string): void
  end (): void
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
    send (event, data, id) {
      if (closed) return
      raw.write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
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

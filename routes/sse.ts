import type { FastifyReply } from 'fastify'

export interface SseStream {
  send (event: string, data: unknown, id?: string): void
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
    end () {
      if (!closed) raw.end()
      closed = true
    }
  }
}

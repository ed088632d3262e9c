import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { IncomingMessage } from 'node:http'
import type { FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import type { Principal } from '../services/auth.js'
import { AppError } from '../services/errors.js'

export const WS_PROTOCOL = 'interpreter.v1'

declare module 'fastify' {
  interface FastifyInstance {
    /** The per-key cap on open sockets (WS_MAX_SOCKETS_PER_KEY), shared by every socket route (/v1/ws, Jupyter channels). */
    sockets: SocketCap
  }
}

export interface SocketCap {
  /** preHandler: a 429 when the request's key already holds its share of sockets. */
  check: (request: FastifyRequest) => Promise<void>
  /** Counts an open socket of the key until it closes. */
  hold: (principal: Principal, socket: WebSocket) => void
  /** A subprotocol a route speaks for the URLs `where` accepts (chosen when the client offers it; ours otherwise). */
  offer: (protocol: string, where: (url: string) => boolean) => void
  /** The subprotocol to answer one upgrade with (false: none), decided before it is accepted (the port proxy: the app's). */
  decide: (request: IncomingMessage, protocol: string | false) => void
}

/** @fastify/websocket with a message size limit; the server speaks the `interpreter.v1` subprotocol. */
export default fp(async (app) => {
  const max = app.config.WS_MAX_SOCKETS_PER_KEY
  const open = new Map<string, number>()
  const offered: Array<{ protocol: string, where: (url: string) => boolean }> = []
  const decided = new WeakMap<IncomingMessage, string | false>()
  app.decorate('sockets', {
    offer: (protocol: string, where: (url: string) => boolean) => { offered.push({ protocol, where }) },
    decide: (request: IncomingMessage, protocol: string | false) => { decided.set(request, protocol) },
    check: async (request: FastifyRequest) => {
      if ((open.get(request.principal.name) ?? 0) >= max) {
        throw new AppError(429, 'too_many_sockets', `This key already has ${max} open WebSockets`)
      }
    },
    hold: (principal: Principal, socket: WebSocket) => {
      open.set(principal.name, (open.get(principal.name) ?? 0) + 1)
      socket.once('close', () => {
        const left = (open.get(principal.name) ?? 1) - 1
        if (left > 0) open.set(principal.name, left)
        else open.delete(principal.name)
      })
    }
  })
  await app.register(websocket, {
    options: {
      maxPayload: app.config.WS_MAX_MESSAGE_BYTES,
      // Browsers cannot set headers: they send the key as a `bearer.<key>` subprotocol next to ours; we only ever echo ours.
      // Other protocols' routes offer their own subprotocols (Jupyter's binary v1 framing) for their URLs.
      handleProtocols: (protocols: Set<string>, request: IncomingMessage) => {
        const decision = decided.get(request)
        if (decision !== undefined) return decision
        const url = request.url ?? ''
        const theirs = offered.find(o => protocols.has(o.protocol) && o.where(url))
        if (theirs) return theirs.protocol
        return protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false
      }
    }
  })
}, { name: 'websocket', dependencies: ['config'] })

import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { IncomingMessage } from 'node:http'
import { JUPYTER_V1_PROTOCOL } from '../services/jupyter.js'

export const WS_PROTOCOL = 'interpreter.v1'

/** @fastify/websocket with a message size limit; the server speaks the `interpreter.v1` subprotocol. */
export default fp(async (app) => {
  await app.register(websocket, {
    options: {
      maxPayload: app.config.WS_MAX_MESSAGE_BYTES,
      // Browsers cannot set headers: they send the key as a `bearer.<key>` subprotocol next to ours; we only ever echo ours.
      // Jupyter's kernel channels speak the binary v1 framing when the client offers it (JSON text frames otherwise).
      handleProtocols: (protocols: Set<string>, request: IncomingMessage) => {
        if (protocols.has(JUPYTER_V1_PROTOCOL) && request.url?.startsWith('/jupyter/')) return JUPYTER_V1_PROTOCOL
        return protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false
      }
    }
  })
}, { name: 'websocket', dependencies: ['config'] })

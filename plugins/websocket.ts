import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'

export const WS_PROTOCOL = 'interpreter.v1'

/** @fastify/websocket with a message size limit; the server speaks the `interpreter.v1` subprotocol. */
export default fp(async (app) => {
  await app.register(websocket, {
    options: {
      maxPayload: app.config.WS_MAX_MESSAGE_BYTES,
      // Browsers cannot set headers: they send the key as a `bearer.<key>` subprotocol next to ours; we only ever echo ours.
      handleProtocols: (protocols: Set<string>) => protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false
    }
  })
}, { name: 'websocket', dependencies: ['config'] })

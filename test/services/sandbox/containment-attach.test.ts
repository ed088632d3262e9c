// The containment suite again, with the server talking to agents over docker attach (the fallback) instead of their sockets.
process.env.TEST_AGENT_CHANNEL = 'attach'
await import('./containment.test.js')

// Secrets injected by the egress proxy, under gVisor (runsc): the same suite behind the second wall.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./secrets.test.js')

// Commands, terminals, watchers and ports under gVisor (runsc): the same suite behind the second wall.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./processes.test.js')

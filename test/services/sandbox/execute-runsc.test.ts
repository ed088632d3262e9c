// The execute suite under gVisor (runsc): the second wall.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./execute.test.js')

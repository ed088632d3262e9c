// The volumes suite under gVisor (runsc): the volume reaches the sandbox through gVisor's gofer.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./volumes.test.js')

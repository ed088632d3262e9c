// E2B's SDKs against sandboxes under gVisor (runsc), which pause with their memory: a variable outlives pause and resume.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
process.env.TEST_PAUSE_MODE = 'memory'
await import('./sdk.test.js')

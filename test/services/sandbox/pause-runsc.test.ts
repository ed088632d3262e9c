// The pause suite under gVisor (runsc), pausing with the memory (SANDBOX_PAUSE_MODE=memory: runsc's own checkpoint).
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
process.env.TEST_PAUSE_MODE = 'memory'
await import('./pause.test.js')

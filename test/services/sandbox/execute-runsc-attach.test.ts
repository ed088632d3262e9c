// The execute suite under gVisor over docker attach: how a server works whose runsc has no --host-uds.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
process.env.TEST_AGENT_CHANNEL = 'attach'
await import('./execute.test.js')

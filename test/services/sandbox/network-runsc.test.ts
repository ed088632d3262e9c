// The network policy suite under gVisor: the egress relay inside reaches the server's proxy through runsc's --host-uds.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./network.test.js')

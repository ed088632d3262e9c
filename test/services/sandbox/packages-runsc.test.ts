// Package installs behind the wall under gVisor (runsc): the same suite behind the second wall.
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
await import('./packages.test.js')

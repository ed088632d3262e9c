import { buildSandboxImage } from '../services/sandbox/image.js'

buildSandboxImage().then(tag => { process.stdout.write(`${tag}\n`) }, (err: Error) => {
  process.stderr.write(`sandbox image build failed: ${err.message}\n`)
  process.exit(1)
})

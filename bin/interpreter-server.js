#!/usr/bin/env node
// Runs the compiled CLI (dist/, made by npm run build and shipped in the package); in a source checkout that was
// not built, the TypeScript CLI through tsx.
import { existsSync } from 'node:fs'

const compiled = new URL('../dist/cli.js', import.meta.url)
if (existsSync(compiled)) {
  await import(compiled.href)
} else {
  const { register } = await import('tsx/esm/api')
  register()
  await import('../cli.ts')
}

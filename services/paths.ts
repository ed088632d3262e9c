import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The package's own directory (where package.json, sandbox/ and ui/ are), found from this file whether it runs as
 * TypeScript from the source tree or compiled under dist/.
 */
function findRoot (from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'sandbox'))) return dir
    if (dirname(dir) === dir) throw new Error(`cannot find the package directory above ${from}`)
  }
}

export const PACKAGE_ROOT = findRoot(dirname(fileURLToPath(import.meta.url)))

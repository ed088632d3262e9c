// npx tsx scripts/make-ca.ts <dir>: the egress proxy's deployment CA (ca.crt, ca.key at mode 0600) in <dir>, unless
// one is there. npm run setup runs it; sandboxes trust ca.crt, and only this server reads ca.key.
import { makeCa } from '../services/sandbox/tls-intercept.js'

const dir = process.argv[2]
if (!dir) {
  process.stderr.write('usage: tsx scripts/make-ca.ts <dir>\n')
  process.exit(2)
}
await makeCa(dir)
process.stdout.write(`${dir}/ca.crt\n`)

// The thresholds (also in package.json "tap", which enforces them quietly) and a check that every file was mapped. Reads tap's json-summary report.
import { readFileSync } from 'node:fs'

const THRESHOLDS = { lines: 90, statements: 90, branches: 80, functions: 85 }
type Metric = keyof typeof THRESHOLDS
type Summary = Record<string, Record<Metric, { total: number, pct: number | 'Unknown' }>>
const summary = JSON.parse(readFileSync('.tap/report/coverage-summary.json', 'utf8')) as Summary

// A file counted as a single statement was recorded without its source map (a child process started through another
// TypeScript loader, for one); tap's merge may then keep that map for the file and the totals stop meaning anything.
const unmapped = Object.entries(summary)
  .filter(([file, s]) => file !== 'total' && s.statements.total <= 1 && readFileSync(file, 'utf8').split('\n').length > 20)
  .map(([file]) => file)
if (unmapped.length) {
  process.stderr.write(`coverage was not mapped onto the sources of: ${unmapped.join(', ')}\n`)
  process.exit(1)
}

// An empty report says 'Unknown': that fails too.
const failed = (Object.keys(THRESHOLDS) as Metric[]).filter(m => !(Number(summary.total[m].pct) >= THRESHOLDS[m]))
for (const m of Object.keys(THRESHOLDS) as Metric[]) {
  process.stdout.write(`coverage ${m}: ${summary.total[m].pct}% (threshold ${THRESHOLDS[m]}%)\n`)
}
if (failed.length) {
  process.stderr.write(`coverage below threshold: ${failed.join(', ')}\n`)
  process.exit(1)
}

// tap has no coverage thresholds below 100%; these are the ones we mean. Reads tap's json-summary report.
import { readFileSync } from 'node:fs'

const THRESHOLDS = { lines: 80, statements: 80, branches: 80, functions: 70 }
type Metric = keyof typeof THRESHOLDS
const summary = JSON.parse(readFileSync('.tap/report/coverage-summary.json', 'utf8')) as { total: Record<Metric, { pct: number }> }
const failed = (Object.keys(THRESHOLDS) as Metric[]).filter(m => summary.total[m].pct < THRESHOLDS[m])
for (const m of Object.keys(THRESHOLDS) as Metric[]) {
  process.stdout.write(`coverage ${m}: ${summary.total[m].pct}% (threshold ${THRESHOLDS[m]}%)\n`)
}
if (failed.length) {
  process.stderr.write(`coverage below threshold: ${failed.join(', ')}\n`)
  process.exit(1)
}

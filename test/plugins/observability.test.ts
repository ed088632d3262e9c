import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import YAML from 'yaml'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

// The operator's alert rules and dashboard (deploy/) must be valid and must only use metrics the server exports.
const rules = YAML.parse(readFileSync('deploy/prometheus/alerts.yml', 'utf8')) as { groups: Array<{ rules: Array<{ alert: string, expr: string }> }> }
const dashboard = JSON.parse(readFileSync('deploy/grafana/interpreter-server.json', 'utf8')) as { panels: Array<{ title: string, targets: Array<{ expr: string }> }> }

/** Metric names in a PromQL expression: identifiers with an underscore that are not functions (label names here have none). */
function metricsIn (expr: string): string[] {
  const names = (expr.replace(/"[^"]*"/g, '').match(/\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b/g) ?? []).filter(n => n !== 'histogram_quantile')
  return names.map(n => n.replace(/_(bucket|sum|count)$/, ''))
}

t.test('promtool accepts the alert rules', async (t) => {
  let out: string
  try {
    out = execFileSync('promtool', ['check', 'rules', 'deploy/prometheus/alerts.yml'], { encoding: 'utf8' })
  } catch (err) {
    throw new Error(`promtool (Debian's prometheus package, installed by scripts/setup.sh) failed: ${(err as Error).message}`)
  }
  t.match(out, /SUCCESS: \d+ rules found/)
  t.same(rules.groups[0].rules.map(r => r.alert).sort(), ['InterpreterServerDown', 'InterpreterServerErrorRate', 'InterpreterServerSlowRequests', 'RedisUnavailable', 'SandboxCapacityExhausted', 'SandboxMemoryBudgetNearlyUsed', 'SandboxResumesSlow', 'SandboxStartFailures', 'SandboxStartQueueBacklog', 'SandboxStartsSlow'])
})

t.test('every metric the rules and the dashboard use is exported by /metrics', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '0' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const res = await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })
  t.equal(res.statusCode, 200)
  const exported = new Set([...res.body.matchAll(/^# TYPE (\S+) /gm)].map(m => m[1]))
  const used = new Set([
    ...rules.groups.flatMap(g => g.rules.flatMap(r => metricsIn(r.expr))),
    ...dashboard.panels.flatMap(p => p.targets.flatMap(x => metricsIn(x.expr)))
  ])
  t.ok(used.size >= 10, `${used.size} metrics used`)
  for (const name of used) t.ok(exported.has(name), `${name} is exported`)
})

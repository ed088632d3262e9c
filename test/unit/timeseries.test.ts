// The charts' samples without Redis: one per 10 s window (a second one asked for in the same window is folded in),
// executions as differences of the running totals, a ring of at most KEEP.
import t from 'tap'
import { TimeSeries, KEEP } from '../../services/timeseries.js'

t.test('one sample per window, differences of totals, a bounded ring', async (t) => {
  let executions = 0
  const series = new TimeSeries('r', null, () => ({ live: 1, warm: 2, paused: 0, queued: 0, memory_used_mb: 512, memory_budget_mb: 1024, hosts: { local: 1 } }),
    async () => ({ executions: { rest: executions, mcp: 2 * executions }, starts: { count: executions, sum: executions * 0.5 } }))
  const t0 = 1_000_000_000_000
  await series.sample(t0) // the first reading: totals so far are the baseline
  executions = 3
  for (let i = 0; i < 10; i++) series.request(i)
  const first = await series.sample(t0 + 10_000)
  t.match(first, { t: t0 + 10_000, requests: 10, executions: { rest: 3, mcp: 6 }, starts: 3, start_ms: 500 })
  t.equal(first.p99_ms, 9)
  executions = 4
  series.request(100)
  const again = await series.sample(t0 + 15_000)
  t.equal(again, first, 'a sample in the same window is folded into its first')
  t.match(again, { requests: 11, executions: { rest: 4, mcp: 8 }, p99_ms: 100 })
  for (let i = 2; i < KEEP + 20; i++) await series.sample(t0 + i * 10_000)
  const { samples } = await series.series(24 * 60, t0 + (KEEP + 20) * 10_000)
  t.equal(samples.length, KEEP, 'the ring keeps an hour')
  t.ok(samples.every((s, i) => i === 0 || s.t - samples[i - 1]!.t === 10_000), 'one sample per window, in order')
})

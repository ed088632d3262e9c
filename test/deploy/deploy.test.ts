import t from 'tap'
import { readFileSync, readdirSync } from 'node:fs'
import YAML from 'yaml'
import { EnvSchema } from '../../schemas/config.js'
import { parseModelsFile } from '../../services/llm/registry.js'
import { loadConfig } from '../../services/config.js'

// deploy/k8s cannot be applied here (no API server, and kubectl's client dry run needs one), so its structure is
// checked: every reference between the objects resolves, the probes are ours, and every setting is one we read.
type Obj = { apiVersion: string, kind: string, metadata: { name: string }, spec?: any, data?: Record<string, string>, stringData?: Record<string, string> }
const objects: Obj[] = readdirSync('deploy/k8s').filter(f => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  .flatMap(f => YAML.parseAllDocuments(readFileSync(`deploy/k8s/${f}`, 'utf8')).map(d => d.toJS() as Obj))
const find = (kind: string, name?: string) => objects.filter(o => o.kind === kind && (name === undefined || o.metadata.name === name))
const labelsMatch = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v)

t.test('the manifests are well-formed and name what they need', async (t) => {
  t.same(objects.map(o => o.kind).sort(), ['ConfigMap', 'Deployment', 'PodDisruptionBudget', 'Secret', 'Service', 'Service', 'StatefulSet'])
  for (const o of objects) t.match(o, { apiVersion: /^(v1|apps\/v1|policy\/v1)$/, kind: String, metadata: { name: /^[a-z0-9-]+$/ } }, `${o.kind} ${o.metadata.name}`)
  const kustomization = YAML.parse(readFileSync('deploy/k8s/kustomization.yaml', 'utf8')) as { resources: string[] }
  t.same(kustomization.resources.sort(), readdirSync('deploy/k8s').filter(f => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort(), 'the kustomization lists every file')

  const [deployment] = find('Deployment')
  const pod = deployment.spec.template
  t.ok(labelsMatch(deployment.spec.selector.matchLabels, pod.metadata.labels), 'the Deployment selects its pods')
  const [server] = pod.spec.containers
  t.match(server.livenessProbe, { httpGet: { path: '/v1/health', port: 'http' } })
  t.match(server.readinessProbe, { httpGet: { path: '/v1/ready', port: 'http' } })
  t.ok(server.ports.some((p: { name: string }) => p.name === 'http'))
  t.match(server.resources, { requests: { cpu: String, memory: String }, limits: { memory: String } })
  const envNames = Object.keys(EnvSchema.properties)
  for (const e of server.env) t.ok(envNames.includes(e.name), `${e.name} is a setting the server reads`)
  const env = Object.fromEntries(server.env.map((e: { name: string, value: string }) => [e.name, e.value]))
  for (const ref of server.envFrom) t.equal(find('Secret', ref.secretRef.name).length, 1, `Secret ${ref.secretRef.name} exists`)
  const [secret] = find('Secret')
  t.doesNotThrow(() => loadConfig({ ...env, ...secret.stringData }), 'the settings and the Secret\'s keys load as a configuration')

  const models = pod.spec.volumes.find((v: { configMap?: unknown }) => v.configMap)
  const map = find('ConfigMap', models.configMap.name)[0]
  const mount = server.volumeMounts.find((m: { name: string }) => m.name === models.name)
  t.equal(`${mount.mountPath}/models.yaml`, env.MODELS_FILE, 'MODELS_FILE points into the mounted ConfigMap')
  t.doesNotThrow(() => parseModelsFile(map.data!['models.yaml'], 'models.yaml', {}), 'and the models file in it is valid')

  const [pdb] = find('PodDisruptionBudget')
  t.ok(labelsMatch(pdb.spec.selector.matchLabels, pod.metadata.labels), 'the PodDisruptionBudget covers the server pods')
  const [statefulSet] = find('StatefulSet')
  t.equal(find('Service', statefulSet.spec.serviceName).length, 1, 'the StatefulSet\'s headless Service exists')
  t.match(statefulSet.spec.template.spec.containers[0].args.join(' '), /--appendonly yes --appendfsync always/, 'Redis keeps an AOF')
  t.equal(statefulSet.spec.volumeClaimTemplates[0].metadata.name, statefulSet.spec.template.spec.containers[0].volumeMounts[0].name)
  t.equal(new URL(env.REDIS_URL).hostname, statefulSet.spec.serviceName, 'REDIS_URL names the Redis Service')
  for (const service of find('Service')) {
    const selected = [deployment, statefulSet].filter(w => labelsMatch(service.spec.selector, w.spec.template.metadata.labels))
    t.equal(selected.length, 1, `Service ${service.metadata.name} selects one workload`)
  }
})

// Runs a TypeScript file with the Node.js of the image: transpiled (types are not checked, as with tsx or ts-node
// --transpile-only), then run as CommonJS with the remaining arguments.
'use strict'
const fs = require('node:fs')
const ts = require('/usr/share/nodejs/typescript')

const file = process.argv[2]
const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
  fileName: file,
  reportDiagnostics: true,
  compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }
})
const errors = (out.diagnostics || []).filter(d => d.category === ts.DiagnosticCategory.Error)
if (errors.length) {
  for (const d of errors) {
    const at = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : null
    process.stderr.write(`${file}${at ? `(${at.line + 1},${at.character + 1})` : ''}: error TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}\n`)
  }
  process.exit(1)
}
const js = file.replace(/\.ts$/, '.js')
fs.writeFileSync(js, out.outputText)
process.argv.splice(1, 2, js)
require(js)

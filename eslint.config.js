// ESLint with neostandard (the Fastify ecosystem's style: standard, for TypeScript too), run by npm test.
import neostandard from 'neostandard'

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'coverage/**', '.tap/**', 'test-output/**', 'node_modules/**'] }),
  {
    rules: {
      // `void promise` marks a promise deliberately not awaited (its errors handled inside).
      'no-void': ['error', { allowAsStatement: true }]
    }
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Tests write models files with ${VAR} references in plain strings on purpose.
      'no-template-curly-in-string': 'off'
    }
  },
  {
    files: ['**/*.ts'],
    rules: {
      // TypeScript resolves names itself (and knows the DOM and Node globals each file uses).
      'no-undef': 'off'
    }
  }
]

// Compiles Solidity with solc-js: standard JSON on stdin, standard JSON on stdout.
// Usage: node compile.js <path to node_modules>   (run by vaults/onchain.py)
//
// Not `solcjs --standard-json`: that CLI prints a ">>> Cannot retry compilation with SMT"
// line on stdout ahead of the JSON when no SMT solver is installed.
"use strict";
const fs = require("fs");
const path = require("path");

const nodeModules = path.resolve(process.argv[2]);
const solc = require(path.join(nodeModules, "solc"));

// Imports resolve from node_modules only ("@openzeppelin/contracts/..."); the contracts'
// own sources arrive inline in the input.
function findImports(importPath) {
  const resolved = path.resolve(nodeModules, importPath);
  if (!resolved.startsWith(nodeModules + path.sep)) {
    return { error: `import outside node_modules: ${importPath}` };
  }
  try {
    return { contents: fs.readFileSync(resolved, "utf8") };
  } catch (err) {
    return { error: `cannot read ${importPath}: ${err.message}` };
  }
}

const input = fs.readFileSync(0, "utf8");
process.stdout.write(solc.compile(input, { import: findImports }));

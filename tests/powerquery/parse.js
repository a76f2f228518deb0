#!/usr/bin/env node
// Parses Power Query (M) expressions with Microsoft's parser (@microsoft/powerquery-parser).
//
//   node parse.js < expressions.json
//
// stdin: a JSON object, name -> M text. stdout: a JSON object, name -> null when the text
// lexes and parses, else {"stage", "message", "line", "column"} (1-based). Exit code 0 when
// every text parses, 1 when one does not, 2 when the input is not such an object.
"use strict";

const PQP = require("@microsoft/powerquery-parser");

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (chunk) => chunks.push(chunk));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

// The first position the parser's error carries (lexer and parser errors differ in shape).
function position(error) {
  const seen = new Set();
  const queue = [error];
  while (queue.length > 0) {
    const node = queue.shift();
    if (node === null || typeof node !== "object" || seen.has(node)) continue;
    seen.add(node);
    if (typeof node.lineNumber === "number" && typeof node.lineCodeUnit === "number") {
      return { line: node.lineNumber + 1, column: node.lineCodeUnit + 1 };
    }
    for (const key of ["innerError", "foundToken", "token", "positionStart", "graphemePosition",
      "firstUnusedToken"]) {
      if (key in node) queue.push(node[key]);
    }
  }
  return { line: null, column: null };
}

async function check(text) {
  const task = await PQP.TaskUtils.tryLexParse(PQP.DefaultSettings, text);
  if (PQP.TaskUtils.isOk(task)) return null;
  const error = task.error;
  return { stage: task.stage, message: String(error && error.message), ...position(error) };
}

async function main() {
  let input;
  try {
    input = JSON.parse(await readStdin());
  } catch (err) {
    process.stderr.write(`parse.js: stdin is not JSON: ${err.message}\n`);
    return 2;
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    process.stderr.write("parse.js: stdin must be a JSON object, name -> M text\n");
    return 2;
  }
  const results = {};
  let failed = false;
  for (const [name, text] of Object.entries(input)) {
    if (typeof text !== "string") {
      process.stderr.write(`parse.js: ${name}: the M text must be a string\n`);
      return 2;
    }
    results[name] = await check(text);
    failed = failed || results[name] !== null;
  }
  process.stdout.write(JSON.stringify(results) + "\n");
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`parse.js: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  },
);

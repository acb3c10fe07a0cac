// Parses AsyncAPI documents with the AsyncAPI Initiative's own parser (@asyncapi/parser) and exits
// non-zero when any of them has an error diagnostic (with --strict, a warning too).
//
//   node scripts/asyncapi-validate.mjs [--strict] [--modules DIR] FILE...
//
// The parser is installed outside the work tree (git-ignored), from scripts/package-lock.json:
//
//   mkdir -p .cache/asyncapi-parser && cp scripts/package.json scripts/package-lock.json .cache/asyncapi-parser/ \
//     && npm ci --prefix .cache/asyncapi-parser --ignore-scripts --no-audit --no-fund
//
// DIR is the folder holding that node_modules (default: .cache/asyncapi-parser at the repository
// root, or $ASYNCAPI_PARSER_MODULES). Exit codes: 0 valid, 1 invalid, 2 usage or setup error.

import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const SEVERITY = ["error", "warning", "info", "hint"];
const here = path.dirname(fileURLToPath(import.meta.url));

function usage(message) {
  console.error(`${message}\nusage: node scripts/asyncapi-validate.mjs [--strict] [--modules DIR] FILE...`);
  process.exit(2);
}

function parseArguments(argv) {
  const options = {
    strict: false,
    modules: process.env.ASYNCAPI_PARSER_MODULES || path.join(here, "..", ".cache", "asyncapi-parser"),
    files: [],
  };
  for (let index = 0; index < argv.length; index += 1) {
    const argument = argv[index];
    if (argument === "--strict") {
      options.strict = true;
    } else if (argument === "--modules") {
      options.modules = argv[++index] ?? usage("--modules needs a folder");
    } else if (argument.startsWith("-")) {
      usage(`unknown option ${argument}`);
    } else {
      options.files.push(argument);
    }
  }
  if (options.files.length === 0) usage("no file given");
  return options;
}

async function loadParser(modules) {
  const require = createRequire(path.join(path.resolve(modules), "package.json"));
  let entry;
  try {
    entry = require.resolve("@asyncapi/parser");
  } catch {
    console.error(`@asyncapi/parser is not installed under ${modules} (see the install command in this file)`);
    process.exit(2);
  }
  const parser = await import(pathToFileURL(entry).href);
  return parser.Parser ?? parser.default.Parser;
}

function where(diagnostic) {
  const at = diagnostic.path?.length ? diagnostic.path.join(".") : "(document)";
  const line = diagnostic.range?.start?.line;
  return line === undefined ? at : `${at} (line ${line + 1})`;
}

const options = parseArguments(process.argv.slice(2));
const Parser = await loadParser(options.modules);
const parser = new Parser();
let failed = false;

for (const file of options.files) {
  const text = await readFile(file, "utf8");
  const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });
  const failing = diagnostics.filter((d) => d.severity === 0 || (options.strict && d.severity === 1));
  for (const diagnostic of diagnostics) {
    const severity = SEVERITY[diagnostic.severity] ?? String(diagnostic.severity);
    console.log(`${file}: ${severity} ${diagnostic.code}: ${diagnostic.message} at ${where(diagnostic)}`);
  }
  if (document === undefined || failing.length > 0) {
    failed = true;
    console.log(`${file}: INVALID (${failing.length} failing diagnostic(s))`);
  } else {
    const version = document.version();
    const channels = document.channels().length;
    const messages = document.allMessages().length;
    console.log(`${file}: valid AsyncAPI ${version} (${channels} channels, ${messages} messages)`);
  }
}

process.exit(failed ? 1 : 0);

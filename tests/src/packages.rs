//! Tiny packages the tests build inside a sandbox, for pip and npm to
//! install: made with what the default image has, no network.

/// A Python script (standard library only) that writes
/// `kiln_hello-1.0-py3-none-any.whl` in its working directory: a pure-python
/// wheel with a module (`kiln_hello.greet()` prints "hello from a wheel")
/// and a console script `kiln-hello`.
pub const MAKE_WHEEL: &str = r#"
import base64, hashlib, zipfile
name, ver = "kiln_hello", "1.0"
info = f"{name}-{ver}.dist-info"
files = {
    f"{name}/__init__.py": "def greet():\n    print('hello from a wheel')\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kiln-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{info}/entry_points.txt": "[console_scripts]\nkiln-hello = kiln_hello:greet\n",
}
record = []
for path, body in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=")
    record.append(f"{path},sha256={digest.decode()},{len(body.encode())}")
files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
with zipfile.ZipFile(f"{name}-{ver}-py3-none-any.whl", "w") as z:
    for path, body in files.items():
        z.writestr(path, body)
"#;

/// The wheel [`MAKE_WHEEL`] writes.
pub const WHEEL: &str = "kiln_hello-1.0-py3-none-any.whl";

/// A shell script that makes the npm package `kiln-pad` 1.0.0 in `./pad`
/// (`require("kiln-pad")(s, n)` pads `s` with dots to `n`; its command
/// `kiln-pad` prints `..cli`) and packs it with `npm pack` into
/// `./pad/kiln-pad-1.0.0.tgz`.
pub const MAKE_NPM_PACKAGE: &str = r#"mkdir -p pad && cd pad
echo '{"name":"kiln-pad","version":"1.0.0","main":"index.js","bin":{"kiln-pad":"cli.js"}}' > package.json
echo 'module.exports = (s, n) => s.padStart(n, ".");' > index.js
printf '#!/usr/bin/env node\nconsole.log(require("./index.js")("cli", 5));\n' > cli.js
npm pack --silent
"#;

/// The tarball [`MAKE_NPM_PACKAGE`] writes.
pub const NPM_TARBALL: &str = "pad/kiln-pad-1.0.0.tgz";

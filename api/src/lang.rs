//! Running a program given as source code: which interpreter, which argv.

use std::fmt;
use std::str::FromStr;

/// A language the `python-node` runtime image can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// CPython 3 (`python3`).
    Python,
    /// Node.js (`node`).
    Node,
    /// GNU bash.
    Bash,
}

/// An unknown language name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown language {0:?} (expected python, node or bash)")]
pub struct UnknownLang(pub String);

impl FromStr for Lang {
    type Err = UnknownLang;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Lang::Python),
            "node" | "nodejs" | "javascript" | "js" => Ok(Lang::Node),
            "bash" | "sh" | "shell" => Ok(Lang::Bash),
            _ => Err(UnknownLang(s.to_string())),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Python => "python",
            Lang::Node => "node",
            Lang::Bash => "bash",
        })
    }
}

/// Where the program's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The source text itself.
    Code(String),
    /// Read the program from the exec's stdin.
    Stdin,
    /// A file already inside the sandbox.
    GuestFile(String),
}

impl Lang {
    /// The interpreter binary (looked up in the guest's `PATH`).
    pub fn interpreter(self) -> &'static str {
        match self {
            Lang::Python => "python3",
            Lang::Node => "node",
            Lang::Bash => "bash",
        }
    }

    /// The argv that runs `source` with `args` as the program's arguments
    /// (`sys.argv[1:]`, `process.argv.slice(2)`, `$1...`).
    pub fn argv(self, source: &Source, args: &[String]) -> Vec<String> {
        let mut argv = vec![self.interpreter().to_string()];
        match (self, source) {
            (Lang::Python, Source::Code(code)) => argv.extend(["-c".into(), code.clone()]),
            (Lang::Node, Source::Code(code)) => argv.extend(["-e".into(), code.clone()]),
            // bash -c CODE NAME ARGS: $0 is NAME, $1.. are ARGS.
            (Lang::Bash, Source::Code(code)) => {
                argv.extend(["-c".into(), code.clone(), "bash".into()])
            }
            (Lang::Python | Lang::Node, Source::Stdin) => argv.push("-".into()),
            (Lang::Bash, Source::Stdin) => argv.push("-s".into()),
            (_, Source::GuestFile(path)) => argv.push(path.clone()),
        }
        if self == Lang::Node && matches!(source, Source::Code(_)) && !args.is_empty() {
            // `node -e CODE a b`: node would treat a, b as more scripts
            // without a `--` separator.
            argv.push("--".into());
        }
        argv.extend(args.iter().cloned());
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_names() {
        assert_eq!("Python".parse(), Ok(Lang::Python));
        assert_eq!("js".parse(), Ok(Lang::Node));
        assert_eq!("sh".parse(), Ok(Lang::Bash));
        assert_eq!("ruby".parse::<Lang>(), Err(UnknownLang("ruby".into())));
    }

    #[test]
    fn argv_per_language_and_source() {
        let code = Source::Code("print(1)".into());
        assert_eq!(
            Lang::Python.argv(&code, &s(&["a"])),
            s(&["python3", "-c", "print(1)", "a"])
        );
        assert_eq!(Lang::Node.argv(&code, &[]), s(&["node", "-e", "print(1)"]));
        assert_eq!(
            Lang::Node.argv(&code, &s(&["a"])),
            s(&["node", "-e", "print(1)", "--", "a"])
        );
        assert_eq!(
            Lang::Bash.argv(&code, &s(&["x"])),
            s(&["bash", "-c", "print(1)", "bash", "x"])
        );
        assert_eq!(Lang::Python.argv(&Source::Stdin, &[]), s(&["python3", "-"]));
        assert_eq!(Lang::Bash.argv(&Source::Stdin, &[]), s(&["bash", "-s"]));
        let file = Source::GuestFile("/tmp/m.js".into());
        assert_eq!(
            Lang::Node.argv(&file, &s(&["1"])),
            s(&["node", "/tmp/m.js", "1"])
        );
    }
}

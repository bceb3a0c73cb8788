//! Registry template names: `[a-z0-9][a-z0-9._-]{0,62}`, never a built-in
//! template's name.

use super::RegistryError;

/// Longest name, bytes.
const MAX_LEN: usize = 63;

/// Checks `name` (a directory name under `<state>/templates/`, so no `/`,
/// no leading dot, nothing a shell or URL must quote).
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| {
        Err(RegistryError::BadName {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return bad("it is empty"),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return bad("it must start with a-z or 0-9")
        }
        Some(_) => {}
    }
    if name.len() > MAX_LEN {
        return bad("it is longer than 63 characters");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return bad("use only a-z, 0-9, '.', '_' and '-'");
    }
    if crate::template::BUILTIN.contains(&name) {
        return bad("it is a built-in template");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_names() {
        for ok in ["t", "a.b_c-d", "0", "a..", &"x".repeat(63)] {
            check_name(ok).expect(ok);
        }
        for (bad, why) in [
            ("", "empty"),
            (".hidden", "start with"),
            ("-x", "start with"),
            ("Upper", "start with"),
            ("a/b", "only a-z"),
            ("a b", "only a-z"),
            ("aB", "only a-z"),
            (&"x".repeat(64), "longer"),
            ("python-node", "built-in"),
            ("minimal", "built-in"),
        ] {
            let err = check_name(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}

//! How every cairn program prints an error: the message and its chain of
//! causes, each said once.
//!
//! Library errors often put their cause in their own message
//! (`"creating {path}: {source}"`) and also return it from
//! [`Error::source`], so a plain walk of the chain (what anyhow's `{:#}`
//! does) says the cause twice or three times: `creating p: boom: boom`.
//! [`Chain`] leaves out a cause whose text was already said.

use std::error::Error;
use std::fmt;

/// Displays an error and the causes its message does not already say,
/// joined by `": "`: `eprintln!("error: {}", Chain(e.as_ref()))` for an
/// `anyhow::Error`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let s = c.to_string();
            if !s.is_empty() && !said.contains(&s) {
                said.push_str(": ");
                said.push_str(&s);
            }
            cause = c.source();
        }
        f.write_str(&said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>, bool);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)?;
            match &self.1 {
                // this message says its cause itself
                Some(c) if self.2 => write!(f, ": {c}"),
                _ => Ok(()),
            }
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn e(msg: &'static str, cause: Option<E>, says_cause: bool) -> E {
        E(msg, cause.map(Box::new), says_cause)
    }

    #[test]
    fn each_cause_once() {
        // context (does not say its cause) over an error that says its own
        let io = e("failed to fill whole buffer", None, false);
        let backhand = e("std io error", Some(io), true);
        let ours = e("writing squashfs image /x", Some(backhand), true);
        let top = e("building images/default.yaml", Some(ours), false);
        assert_eq!(
            Chain(&top).to_string(),
            "building images/default.yaml: writing squashfs image /x: std io error: failed to fill whole buffer"
        );
    }

    #[test]
    fn causes_that_are_not_said_are_kept() {
        let inner = e("Permission denied (os error 13)", None, false);
        let mid = e("opening /var/lib/cairn/state", Some(inner), false);
        let top = e("cairn-update: checking for an update", Some(mid), false);
        assert_eq!(
            Chain(&top).to_string(),
            "cairn-update: checking for an update: opening /var/lib/cairn/state: Permission denied (os error 13)"
        );
        assert_eq!(Chain(&e("alone", None, false)).to_string(), "alone");
    }
}

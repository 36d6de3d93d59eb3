//! How both programs end a command: one error line with each cause once, and a reader that
//! left early (`relay device list | head -1`) taken as success.

use std::error::Error;
use std::io::ErrorKind;

/// `error` and its causes joined with `": "`, leaving out a cause whose text the line already
/// holds. Many error types both print their source (`"{path}: {source}"`) and return it from
/// `source()`; walking the chain naively prints such a cause twice
/// (`No such file or directory (os error 2): No such file or directory (os error 2)`).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

/// Whether `error` (or a cause) is a write to a closed pipe: the reader of stdout went away,
/// which is no failure of the command (coreutils and ripgrep end quietly with 0 then).
/// serde_json's error hides the I/O error it wraps from `source()`, so it is asked directly.
pub fn is_broken_pipe(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::BrokenPipe
        {
            return true;
        }
        if let Some(json) = e.downcast_ref::<serde_json::Error>()
            && json.io_error_kind() == Some(ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Embeds {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the configuration")]
    struct Context {
        #[source]
        source: Embeds,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let e = Context {
            source: Embeds {
                path: "/x/relay.yaml".into(),
                source: std::io::Error::from(ErrorKind::NotFound),
            },
        };
        let line = chain(&e);
        assert_eq!(line.matches("entity not found").count(), 1, "{line}");
        assert!(
            line.starts_with("loading the configuration: /x/relay.yaml: "),
            "{line}"
        );
    }

    #[test]
    fn a_closed_pipe_is_found_behind_serde_json_and_wrappers() {
        let json = serde_json::Error::io(std::io::Error::from(ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&json));
        let wrapped = Embeds {
            path: "stdout".into(),
            source: std::io::Error::from(ErrorKind::BrokenPipe),
        };
        assert!(is_broken_pipe(&wrapped));
        assert!(!is_broken_pipe(&std::io::Error::from(ErrorKind::NotFound)));
    }
}

//! The relay's open-file limit: every link, engineer connection and peer stream holds a
//! descriptor, so the soft limit a shell or service manager starts the relay with (often
//! 1024) would cap it at about a thousand boards. The relay raises its soft limit to the hard
//! one at start, as nginx's `worker_rlimit_nofile` or Go's runtime do; the hard limit is the
//! operator's (`LimitNOFILE=` in the shipped systemd unit, `ulimit -Hn`).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors the relay keeps for itself beyond links: listeners, the store, logs, NATS.
const RESERVED: u64 = 64;

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_to_hard() -> Result<u64, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// How many links (boards and engineers together) `limit` descriptors allow, roughly.
pub fn links_allowed(limit: u64) -> u64 {
    limit.saturating_sub(RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() -> Result<(), nix::Error> {
        let limit = raise_to_hard()?;
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        assert_eq!(soft, hard);
        assert_eq!(limit, hard);
        assert!(links_allowed(limit) < limit);
        Ok(())
    }
}

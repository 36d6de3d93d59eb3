//! Which relay the link dials next, when a board knows more than one: the enrolled URL plus
//! `link.relay_urls` (more relays of the same cluster, or the same relay over another
//! transport, such as `wss://` behind a firewall that blocks the SSH port).
//!
//! The first attempt starts at a random URL so that a fleet restarting together spreads over
//! the relays; a failure moves on to the next URL (after the same jittered backoff as with one
//! relay); a URL that linked stays the choice for as long as it keeps working, so a board
//! returns to its last good relay first after a link drop.

/// The enrolled URL followed by `more`, each URL once.
pub fn candidates(enrolled: &str, more: &[String]) -> Vec<String> {
    let mut urls = vec![enrolled.to_string()];
    for url in more {
        if !urls.contains(url) {
            urls.push(url.clone());
        }
    }
    urls
}

/// A board's relays (as URLs, or parsed) and which one is tried next.
#[derive(Debug, Clone)]
pub struct RelayChoice<T> {
    relays: Vec<T>,
    next: usize,
}

impl<T> RelayChoice<T> {
    /// Starts at `relays[start % len]` (pass a random number); `None` when there is no relay.
    pub fn new(relays: Vec<T>, start: usize) -> Option<RelayChoice<T>> {
        if relays.is_empty() {
            return None;
        }
        let next = start % relays.len();
        Some(RelayChoice { relays, next })
    }

    /// The relay to dial now.
    pub fn current(&self) -> &T {
        &self.relays[self.next]
    }

    /// The current relay failed (could not link): the next one is tried.
    pub fn failed(&mut self) {
        self.next = (self.next + 1) % self.relays.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_enrolled_url_comes_first_and_each_url_once() {
        let all = candidates(
            "ssh://a:2222",
            &urls(&[
                "ssh://b:2222",
                "ssh://a:2222",
                "wss://a/v1/link",
                "ssh://b:2222",
            ]),
        );
        assert_eq!(
            all,
            urls(&["ssh://a:2222", "ssh://b:2222", "wss://a/v1/link"])
        );
        let c = RelayChoice::new(all, 0);
        assert_eq!(
            c.as_ref().map(|c| c.current().as_str()),
            Some("ssh://a:2222")
        );
    }

    #[test]
    fn failures_go_round_the_list_from_a_random_start() {
        let Some(mut c) = RelayChoice::new(urls(&["ssh://a:1", "ssh://b:1", "ssh://c:1"]), 7)
        else {
            panic!("three relays make a choice");
        };
        // 7 mod 3 = 1: the second.
        assert_eq!(c.current(), "ssh://b:1");
        c.failed();
        assert_eq!(c.current(), "ssh://c:1");
        c.failed();
        assert_eq!(c.current(), "ssh://a:1");
        c.failed();
        assert_eq!(c.current(), "ssh://b:1");
        // What works stays the choice.
        assert_eq!(c.current(), "ssh://b:1");
        c.failed();
        c.failed();
        c.failed();
        assert_eq!(
            c.current(),
            "ssh://b:1",
            "three failures later, round again"
        );
    }

    #[test]
    fn one_url_is_always_the_one_and_none_is_no_choice() {
        let Some(mut c) = RelayChoice::new(urls(&["ssh://a:1"]), 12345) else {
            panic!("one relay makes a choice");
        };
        c.failed();
        assert_eq!(c.current(), "ssh://a:1");
        assert!(RelayChoice::<String>::new(Vec::new(), 0).is_none());
    }
}

//! Which relay the link dials next, when a board knows more than one: the enrolled URL plus
//! `link.relay_urls` (more relays of the same cluster, or the same relay over another
//! transport, such as `wss://` behind a firewall that blocks the SSH port).
//!
//! The first attempt starts at a random URL so that a fleet restarting together spreads over
//! the relays; a failure moves on to the next URL (after the same jittered backoff as with one
//! relay); a URL that linked stays the choice for as long as it keeps working, so a board
//! returns to its last good relay first after a link drop.

/// The relay URLs of a board and which one is tried next.
#[derive(Debug, Clone)]
pub struct RelayChoice {
    urls: Vec<String>,
    next: usize,
}

impl RelayChoice {
    /// `enrolled` followed by `more`, each URL once, starting at index `start` (taken modulo
    /// the number of URLs; pass a random number).
    pub fn new(enrolled: &str, more: &[String], start: usize) -> RelayChoice {
        let mut urls = vec![enrolled.to_string()];
        for url in more {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
        let next = start % urls.len();
        RelayChoice { urls, next }
    }

    /// The URL to dial now.
    pub fn current(&self) -> &str {
        &self.urls[self.next]
    }

    /// Where [`RelayChoice::current`] is in [`RelayChoice::urls`].
    pub fn index(&self) -> usize {
        self.next
    }

    /// All URLs, the enrolled one first.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The current URL failed (could not link, or its link dropped without ever having been
    /// up): the next one is tried.
    pub fn failed(&mut self) {
        self.next = (self.next + 1) % self.urls.len();
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
        let c = RelayChoice::new(
            "ssh://a:2222",
            &urls(&[
                "ssh://b:2222",
                "ssh://a:2222",
                "wss://a/v1/link",
                "ssh://b:2222",
            ]),
            0,
        );
        assert_eq!(
            c.urls(),
            urls(&["ssh://a:2222", "ssh://b:2222", "wss://a/v1/link"])
        );
        assert_eq!(c.current(), "ssh://a:2222");
    }

    #[test]
    fn failures_go_round_the_list_from_a_random_start() {
        let mut c = RelayChoice::new("ssh://a:1", &urls(&["ssh://b:1", "ssh://c:1"]), 7);
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
    fn one_url_is_always_the_one() {
        let mut c = RelayChoice::new("ssh://a:1", &[], 12345);
        c.failed();
        assert_eq!(c.current(), "ssh://a:1");
    }
}

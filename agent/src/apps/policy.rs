//! The supervisor's decisions, apart from the processes and files they act on: how a failed
//! `run` step is restarted and when its component is `broken`, when a new deployment has
//! settled, when a dependency is ready for its dependents, which components depend on which,
//! and what a component's record becomes when it is deployed or the agent comes back.
//!
//! Everything here is a pure function or a small piece of state, so the rules are tested
//! without starting a process ([`crate::apps::supervisor`] and [`crate::apps::component_task`]
//! carry them out).

use std::collections::BTreeMap;
use std::time::Duration;

use tether_protocol::recipe::{self, DependencyKind, Recipe};

use crate::apps::component::{Desired, Record, State};
use crate::apps::error::SupervisorError;
use crate::config::AppsConfig;

/// The restart pacing of one supervised `run` step: exponential backoff from
/// `apps.backoff_initial` up to `apps.backoff_max`, back to the start once the step stayed up
/// for `apps.stable_after`, and no restart at all after `apps.broken_after` failures without a
/// successful run.
#[derive(Debug, Clone)]
pub struct Restarts {
    initial: Duration,
    max: Duration,
    broken_after: u32,
    next: Duration,
}

/// What follows a failure of the `run` (or `startup`) step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Restart after this delay.
    RestartIn(Duration),
    /// Failed too often: leave it `broken` until someone starts it again.
    Broken,
}

impl Restarts {
    /// The pacing `config` asks for, starting at the initial delay.
    pub fn new(config: &AppsConfig) -> Self {
        Self {
            initial: config.backoff_initial,
            max: config.backoff_max,
            broken_after: config.broken_after,
            next: config.backoff_initial,
        }
    }

    /// The step stayed up long enough to count as a successful run: the next failure waits
    /// only the initial delay again. (The failure count is reset in the record alongside.)
    pub fn stable(&mut self) {
        self.next = self.initial;
    }

    /// The decision after a failure, `errors` being the failures since the last successful
    /// run (this one included); each restart doubles the delay of the next, up to the maximum.
    pub fn after_failure(&mut self, errors: u32) -> AfterFailure {
        if errors >= self.broken_after {
            return AfterFailure::Broken;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        AfterFailure::RestartIn(delay)
    }
}

/// The components by name, for the dependency questions below.
pub type Recipes<'a> = BTreeMap<String, &'a Recipe>;

fn hard_dependency(recipe: &Recipe, on: &str) -> bool {
    recipe
        .dependencies
        .get(on)
        .is_some_and(|d| matches!(d.kind, DependencyKind::Hard))
}

/// The order to start `recipes` in: every component after what it depends on.
pub fn start_order(recipes: &Recipes<'_>) -> Result<Vec<String>, SupervisorError> {
    let all: Vec<&Recipe> = recipes.values().copied().collect();
    Ok(recipe::start_order(&all)?)
}

/// The components that have a hard dependency on `name`, directly or through others, in
/// start order: they are stopped (in reverse) before `name` is stopped, restarted or
/// replaced, and started again after it.
pub fn hard_dependents(recipes: &Recipes<'_>, name: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut frontier = vec![name.to_string()];
    while let Some(n) = frontier.pop() {
        for (other, r) in recipes {
            if hard_dependency(r, &n) && !found.contains(other) && other != name {
                found.push(other.clone());
                frontier.push(other.clone());
            }
        }
    }
    let order = start_order(recipes).unwrap_or_default();
    order.into_iter().filter(|n| found.contains(n)).collect()
}

/// The components other than `name` with a direct hard dependency on it: while there are any,
/// `name` cannot be removed.
pub fn hard_users(recipes: &Recipes<'_>, name: &str) -> Vec<String> {
    recipes
        .iter()
        .filter(|(n, r)| *n != name && hard_dependency(r, name))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The state of a component whose task is not running: installed if its version's install
/// step completed, else new (install runs at the next start).
pub fn at_rest(record: &Record) -> State {
    if record.installed_version.as_deref() == Some(record.version.as_str()) {
        State::Installed
    } else {
        State::New
    }
}

/// The state a component's record is taken to be in when the agent starts: a state only a
/// running task can be in (the previous agent was killed mid-way) is the state at rest.
pub fn after_agent_restart(record: &Record) -> State {
    match record.state {
        State::Starting | State::Running | State::Stopping => at_rest(record),
        other => other,
    }
}

/// Whether the agent starts the component when it comes back: wanted running, and not given
/// up on as broken.
pub fn starts_with_agent(record: &Record) -> bool {
    record.desired == Desired::Running && record.state != State::Broken
}

/// The record of a component deployed as `version` over `old` (its record, if deployed):
/// wanted running, counters cleared. Its previous version is what it replaces (replacing a
/// version by itself keeps the one before), and a redeploy of the same version installs
/// again, as a deployment means.
pub fn deployed_record(
    old: Option<&Record>,
    name: &str,
    version: &str,
    configuration: serde_json::Value,
    overrides: serde_json::Value,
) -> Record {
    let replacing_same = old.is_some_and(|o| o.version == version);
    Record {
        name: name.to_string(),
        version: version.to_string(),
        previous_version: if replacing_same {
            old.and_then(|o| o.previous_version.clone())
        } else {
            old.map(|o| o.version.clone())
        },
        desired: Desired::Running,
        state: State::New,
        installed_version: old
            .and_then(|o| o.installed_version.clone())
            .filter(|v| v == version && !replacing_same),
        configuration,
        overrides,
        errors: 0,
        restarts: 0,
        pgid: None,
        last_error: None,
    }
}

/// Whether a dependent may start, as far as one of its hard dependencies goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyGate {
    /// It is running or finished, or stopped on purpose: start.
    Ready,
    /// It is on its way: wait a little and look again.
    Wait,
    /// It is broken, or did not get there within `apps.step_timeout`: start anyway (with a
    /// warning), since a slow or broken dependency is no reason to leave its dependents down.
    GiveUp,
}

/// The gate of a dependency in `state`, wanted `desired`, `timed_out` once the wait passed
/// `apps.step_timeout`.
pub fn dependency_gate(state: State, desired: Desired, timed_out: bool) -> DependencyGate {
    if matches!(state, State::Running | State::Finished) || desired == Desired::Stopped {
        DependencyGate::Ready
    } else if timed_out || state == State::Broken {
        DependencyGate::GiveUp
    } else {
        DependencyGate::Wait
    }
}

/// Where a newly deployed component stands while the deployment waits for it to settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settling {
    /// Not decided yet.
    Wait,
    /// It stayed up for `apps.settle_time`: the deployment succeeded.
    Settled,
    /// It failed: the deployment is rolled back.
    Unstable,
    /// It never got past starting, `apps.step_timeout` after the settle time: rolled back.
    NeverRan,
}

/// The verdict on a component in `state` with `errors` failures, once `settle_time_passed`
/// and once `grace_passed` (the settle time plus `apps.step_timeout`).
pub fn settling(
    state: State,
    errors: u32,
    settle_time_passed: bool,
    grace_passed: bool,
) -> Settling {
    if errors > 0 || matches!(state, State::Errored | State::Broken) {
        Settling::Unstable
    } else if settle_time_passed && matches!(state, State::Running | State::Finished) {
        Settling::Settled
    } else if grace_passed {
        Settling::NeverRan
    } else {
        Settling::Wait
    }
}

/// Whether a component that was just started is past starting, so `agent app start` and
/// `restart` can answer with the state it reached.
pub fn past_starting(state: State) -> bool {
    !matches!(state, State::New | State::Installed | State::Starting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    type R = Result<(), Box<dyn std::error::Error>>;

    fn config(initial_ms: u64, max_ms: u64, broken_after: u32) -> AppsConfig {
        AppsConfig {
            backoff_initial: Duration::from_millis(initial_ms),
            backoff_max: Duration::from_millis(max_ms),
            broken_after,
            ..AppsConfig::default()
        }
    }

    fn ms(n: u64) -> AfterFailure {
        AfterFailure::RestartIn(Duration::from_millis(n))
    }

    #[test]
    fn restarts_back_off_exponentially_up_to_the_maximum() {
        let mut r = Restarts::new(&config(100, 500, 100));
        let delays: Vec<AfterFailure> = (1..=6).map(|e| r.after_failure(e)).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(500), ms(500), ms(500)]
        );
    }

    #[test]
    fn a_component_is_broken_after_the_configured_failures() {
        let mut r = Restarts::new(&config(100, 1000, 3));
        assert_eq!(r.after_failure(1), ms(100));
        assert_eq!(r.after_failure(2), ms(200));
        assert_eq!(r.after_failure(3), AfterFailure::Broken);
        // However it got there: more failures than the limit are broken too.
        assert_eq!(r.after_failure(7), AfterFailure::Broken);
        let mut once = Restarts::new(&config(100, 1000, 1));
        assert_eq!(once.after_failure(1), AfterFailure::Broken);
    }

    #[test]
    fn a_stable_run_starts_the_backoff_over() {
        let mut r = Restarts::new(&config(100, 1000, 10));
        r.after_failure(1);
        r.after_failure(2);
        assert_eq!(r.after_failure(3), ms(400));
        r.stable();
        // The record's failure count is cleared with it, so this is failure 1 again.
        assert_eq!(r.after_failure(1), ms(100));
        assert_eq!(r.after_failure(2), ms(200));
    }

    fn recipe(name: &str, deps: &[(&str, &str)]) -> Result<Recipe, Box<dyn std::error::Error>> {
        // Component names are reverse-DNS: `web` stands for `t.web`.
        let mut text = format!("name: t.{name}\nversion: 1.0.0\n");
        if !deps.is_empty() {
            text.push_str("dependencies:\n");
            for (dep, kind) in deps {
                text.push_str(&format!(
                    "  t.{dep}:\n    version: \">=1.0.0\"\n    type: {kind}\n"
                ));
            }
        }
        text.push_str("manifests:\n  - lifecycle:\n      run: sleep 60\n");
        Ok(recipe::parse(&text, Path::new("test.yaml"))?)
    }

    fn by_name(recipes: &[Recipe]) -> Recipes<'_> {
        recipes.iter().map(|r| (r.name.clone(), r)).collect()
    }

    fn names(short: &[&str]) -> Vec<String> {
        short.iter().map(|n| format!("t.{n}")).collect()
    }

    #[test]
    fn dependents_are_the_transitive_hard_ones_in_start_order() -> R {
        // db <- api <- web (hard), db <- cache (hard), api <- metrics (soft), other alone.
        let all = [
            recipe("web", &[("api", "hard")])?,
            recipe("api", &[("db", "hard")])?,
            recipe("db", &[])?,
            recipe("cache", &[("db", "hard")])?,
            recipe("metrics", &[("api", "soft")])?,
            recipe("other", &[])?,
        ];
        let recipes = by_name(&all);
        let order = start_order(&recipes)?;
        // Exactly the hard dependents, in start order, so stopping them in reverse stops web
        // before api.
        let expected: Vec<String> = order
            .iter()
            .filter(|n| names(&["api", "web", "cache"]).contains(n))
            .cloned()
            .collect();
        assert_eq!(expected.len(), 3);
        assert_eq!(hard_dependents(&recipes, "t.db"), expected);
        let pos = |n: &str| expected.iter().position(|o| o == n);
        assert!(pos("t.api") < pos("t.web"));
        assert_eq!(hard_dependents(&recipes, "t.api"), names(&["web"]));
        // A soft dependency does not restart its dependent.
        assert!(hard_dependents(&recipes, "t.metrics").is_empty());
        assert!(hard_dependents(&recipes, "t.web").is_empty());
        assert!(hard_dependents(&recipes, "t.not-deployed").is_empty());
        Ok(())
    }

    #[test]
    fn only_direct_hard_users_block_a_removal() -> R {
        let all = [
            recipe("web", &[("api", "hard")])?,
            recipe("api", &[("db", "hard")])?,
            recipe("db", &[])?,
            recipe("metrics", &[("db", "soft")])?,
        ];
        let recipes = by_name(&all);
        assert_eq!(hard_users(&recipes, "t.db"), names(&["api"]));
        assert_eq!(hard_users(&recipes, "t.api"), names(&["web"]));
        assert!(hard_users(&recipes, "t.web").is_empty());
        Ok(())
    }

    fn record(version: &str, installed: Option<&str>, state: State, desired: Desired) -> Record {
        Record {
            name: "c".into(),
            version: version.into(),
            previous_version: None,
            desired,
            state,
            installed_version: installed.map(String::from),
            configuration: serde_json::json!({}),
            overrides: serde_json::json!({}),
            errors: 0,
            restarts: 0,
            pgid: None,
            last_error: None,
        }
    }

    #[test]
    fn an_agent_coming_back_puts_running_states_to_rest_and_restarts_what_is_wanted() {
        use Desired::{Running, Stopped};
        for (state, installed, expected) in [
            (State::Running, Some("1"), State::Installed),
            (State::Starting, None, State::New),
            (State::Stopping, Some("0"), State::New),
            (State::Broken, Some("1"), State::Broken),
            (State::Finished, Some("1"), State::Finished),
            (State::Stopped, Some("1"), State::Stopped),
            (State::Errored, Some("1"), State::Errored),
        ] {
            let r = record("1", installed, state, Running);
            assert_eq!(after_agent_restart(&r), expected, "{state}");
        }
        assert!(starts_with_agent(&record(
            "1",
            None,
            State::Errored,
            Running
        )));
        assert!(starts_with_agent(&record(
            "1",
            None,
            State::Stopped,
            Running
        )));
        assert!(!starts_with_agent(&record(
            "1",
            None,
            State::Broken,
            Running
        )));
        assert!(!starts_with_agent(&record(
            "1",
            None,
            State::Installed,
            Stopped
        )));
    }

    #[test]
    fn a_deployed_record_remembers_what_it_replaced() {
        let cfg = serde_json::json!({"port": 1});
        let fresh = deployed_record(None, "c", "1.0.0", cfg.clone(), serde_json::json!({}));
        assert_eq!(
            (fresh.previous_version, fresh.installed_version),
            (None, None)
        );
        assert_eq!((fresh.state, fresh.desired), (State::New, Desired::Running));

        let mut old = record("1.0.0", Some("1.0.0"), State::Broken, Desired::Stopped);
        old.previous_version = Some("0.9.0".into());
        old.errors = 3;
        old.restarts = 5;
        let upgrade = deployed_record(Some(&old), "c", "2.0.0", cfg.clone(), cfg.clone());
        assert_eq!(upgrade.previous_version.as_deref(), Some("1.0.0"));
        assert_eq!(upgrade.installed_version, None);
        assert_eq!((upgrade.errors, upgrade.restarts), (0, 0));
        assert_eq!(
            (upgrade.state, upgrade.desired),
            (State::New, Desired::Running)
        );

        // The same version again keeps the version before it, and installs again.
        let same = deployed_record(Some(&old), "c", "1.0.0", cfg.clone(), cfg.clone());
        assert_eq!(same.previous_version.as_deref(), Some("0.9.0"));
        assert_eq!(same.installed_version, None);

        // Going back to a version whose install the record still holds skips the install.
        let mut installed_ahead = record("2.0.0", Some("1.0.0"), State::Errored, Desired::Running);
        installed_ahead.previous_version = Some("1.0.0".into());
        let back = deployed_record(Some(&installed_ahead), "c", "1.0.0", cfg.clone(), cfg);
        assert_eq!(back.installed_version.as_deref(), Some("1.0.0"));
        assert_eq!(back.previous_version.as_deref(), Some("2.0.0"));
    }

    #[test]
    fn dependents_wait_for_a_dependency_until_it_runs_breaks_or_times_out() {
        use DependencyGate::{GiveUp, Ready, Wait};
        use Desired::{Running, Stopped};
        assert_eq!(dependency_gate(State::Running, Running, false), Ready);
        assert_eq!(dependency_gate(State::Finished, Running, false), Ready);
        assert_eq!(dependency_gate(State::Installed, Stopped, false), Ready);
        assert_eq!(dependency_gate(State::Starting, Running, false), Wait);
        assert_eq!(dependency_gate(State::Errored, Running, false), Wait);
        assert_eq!(dependency_gate(State::Broken, Running, false), GiveUp);
        assert_eq!(dependency_gate(State::Starting, Running, true), GiveUp);
    }

    #[test]
    fn a_deployment_settles_only_if_the_component_stays_up() {
        use Settling::{NeverRan, Settled, Unstable, Wait};
        assert_eq!(settling(State::Running, 0, false, false), Wait);
        assert_eq!(settling(State::Running, 0, true, false), Settled);
        assert_eq!(settling(State::Finished, 0, true, false), Settled);
        // Any failure within the settle time rolls back, even if it is running again.
        assert_eq!(settling(State::Running, 1, true, false), Unstable);
        assert_eq!(settling(State::Errored, 0, false, false), Unstable);
        assert_eq!(settling(State::Broken, 0, false, false), Unstable);
        assert_eq!(settling(State::Starting, 0, true, false), Wait);
        assert_eq!(settling(State::Starting, 0, true, true), NeverRan);
        assert!(!past_starting(State::Starting) && past_starting(State::Running));
        assert!(past_starting(State::Errored) && !past_starting(State::Installed));
    }
}

//! Why an operation of the application supervisor failed.

use tether_protocol::recipe;
use thiserror::Error;

use crate::account::AccountError;
use crate::apps::artifacts::ArtifactError;

/// Why an operation on components failed.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// The recipe is not acceptable (boxed: recipe errors carry paths and messages).
    #[error(transparent)]
    Recipe(Box<recipe::RecipeError>),
    /// An artifact could not be made ready.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// No such component is deployed.
    #[error("no component named {0:?} is deployed")]
    NotDeployed(String),
    /// A step failed.
    #[error("{component} {version}: {step} step {message}")]
    Step {
        /// Component name.
        component: String,
        /// Its version.
        version: String,
        /// Which step.
        step: &'static str,
        /// What happened.
        message: String,
    },
    /// A new component did not stay up.
    #[error("{component} {version}: {message}")]
    Unstable {
        /// Component name.
        component: String,
        /// Its version.
        version: String,
        /// What its last failure was.
        message: String,
    },
    /// The deployment failed and was undone.
    #[error("{message}; {undone}")]
    RolledBack {
        /// Why it failed.
        message: String,
        /// What was restored.
        undone: String,
    },
    /// Another component depends on this one.
    #[error("{0}")]
    InUse(String),
    /// The unix account for steps cannot be used.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The state directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<recipe::RecipeError> for SupervisorError {
    fn from(e: recipe::RecipeError) -> Self {
        SupervisorError::Recipe(Box::new(e))
    }
}

/// Maps an I/O error to [`SupervisorError::Io`], saying what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

//! What each role may do, decided here and nowhere else: the SSH front asks before it opens an
//! engineer's session or forward (and again when a live login's role changes), the HTTP API
//! before a token changes anything. Engineers and API tokens share the roles of the store
//! ([`Role`]).

use crate::store::Role;

/// Something a role may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Open a session on a device through the relay: a shell, an exec, sftp or scp.
    OpenSession,
    /// Open a forward to a device: `ssh -L` to a device-local port, or `ssh -J` to its sshd.
    Forward,
    /// Change something through the API: a device's configuration or tags, a deployment, a
    /// remote action.
    Change,
}

impl Permission {
    /// What an engineer's live login may be using, and so loses when its role no longer
    /// allows it.
    const HELD_BY_LOGINS: [Permission; 2] = [Permission::OpenSession, Permission::Forward];
}

/// Whether `role` may do `what`. Admins and operators may do everything here; viewers only
/// read.
pub fn allows(role: Role, what: Permission) -> bool {
    match role {
        Role::Admin | Role::Operator => true,
        Role::Viewer => match what {
            Permission::OpenSession | Permission::Forward | Permission::Change => false,
        },
    }
}

/// Whether an engineer logged in with role `before` and now holding `after` lost something
/// its connection may be using; the relay then closes that connection.
pub fn loses_access(before: Role, after: Role) -> bool {
    Permission::HELD_BY_LOGINS
        .into_iter()
        .any(|p| allows(before, p) && !allows(after, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_only_read() {
        for what in [
            Permission::OpenSession,
            Permission::Forward,
            Permission::Change,
        ] {
            assert!(allows(Role::Admin, what), "{what:?}");
            assert!(allows(Role::Operator, what), "{what:?}");
            assert!(!allows(Role::Viewer, what), "{what:?}");
        }
    }

    #[test]
    fn only_a_demotion_to_viewer_closes_a_login() {
        assert!(loses_access(Role::Operator, Role::Viewer));
        assert!(loses_access(Role::Admin, Role::Viewer));
        assert!(!loses_access(Role::Admin, Role::Operator));
        assert!(!loses_access(Role::Viewer, Role::Operator));
        assert!(!loses_access(Role::Viewer, Role::Viewer));
    }
}

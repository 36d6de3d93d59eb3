//! The SSH authentication reply of every server the relay runs (the engineers' and devices'
//! port, the peer port): only public keys are accepted.

use russh::MethodKind;
use russh::MethodSet;
use russh::server::Auth;

/// A refusal that names public keys as the only method left: saying so up front spares
/// clients futile password prompts.
pub fn reject() -> Auth {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    Auth::Reject {
        proceed_with_methods: Some(methods),
        partial_success: false,
    }
}

//! Conformance: device key rotation.

use super::*;

pub(crate) fn the_next_key_replaces_the_old_at_its_first_login(store: &dyn Backend) -> TestResult {
    store.add_tenant("acme")?;
    let token = store.create_token(crate::store::NewToken {
        tenant: "acme",
        kind: crate::store::TokenKind::Enroll,
        ttl: None,
        uses: None,
        require_accept: false,
        allow_replace: false,
        role: crate::store::Role::Operator,
    })?;
    let old = EngineerKey::parse(&key(1)?)?;
    let enrolled = store.redeem_enroll_token(
        &token.secret,
        DeviceEnrollment {
            name: "b1".into(),
            public_key_openssh: old.openssh.clone(),
            fingerprint: old.fingerprint.clone(),
            agent_version: "0".into(),
            force: false,
        },
    )?;
    let id = enrolled.device.id;
    assert!(store.register_next_key(&id, &old.openssh).is_err());
    let new_fp = store.register_next_key(&id, &key(2)?)?;
    // Both keys log in until the new one is used.
    let l = store.device_login(&old.fingerprint)?.ok_or("old key")?;
    assert!(l.rotated_from.is_none());
    let l = store.device_login(&new_fp)?.ok_or("new key")?;
    assert_eq!(l.rotated_from.as_deref(), Some(old.fingerprint.as_str()));
    assert_eq!(l.device.fingerprint, new_fp);
    assert!(store.device_login(&old.fingerprint)?.is_none());
    assert!(
        store
            .device_login(&new_fp)?
            .is_some_and(|l| l.rotated_from.is_none())
    );
    Ok(())
}

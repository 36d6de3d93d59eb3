//! Conformance: minting, listing, redeeming, expiring, using up and revoking tokens.

use super::*;

pub(crate) fn token_secrets_have_the_documented_shape_and_bad_requests_are_refused(
    s: &dyn Backend,
) -> TestResult {
    s.add_tenant("acme")?;
    let t = s.create_token(NewToken {
        tenant: "acme",
        kind: TokenKind::Enroll,
        ttl: Some(Duration::from_secs(3600)),
        uses: Some(2),
        require_accept: false,
        allow_replace: false,
        role: crate::store::Role::Operator,
    })?;
    let body = t.secret.strip_prefix("tet_").ok_or("no tet_ prefix")?;
    assert_eq!(body.len(), 43);
    assert!(
        body.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert!(t.id.starts_with("tok_") && t.expires_at.is_some());
    let listed = s.tokens(Some("acme"))?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uses_left, Some(2));
    assert_eq!(listed[0].state, TokenState::Active);
    let json = serde_json::to_string(&listed)?;
    assert!(!json.contains(body), "listing shows the secret");
    let mut bad = NewToken {
        tenant: "acme",
        kind: TokenKind::Enroll,
        ttl: None,
        uses: Some(0),
        require_accept: false,
        allow_replace: false,
        role: crate::store::Role::Operator,
    };
    assert!(matches!(
        s.create_token(bad.clone()),
        Err(StoreError::Invalid(_))
    ));
    bad.kind = TokenKind::Api;
    bad.uses = Some(3);
    assert!(matches!(
        s.create_token(bad.clone()),
        Err(StoreError::Invalid(_))
    ));
    bad.tenant = "nope";
    bad.uses = None;
    let e = s.create_token(bad).err().map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("no tenant named \"nope\""));
    assert!(matches!(
        s.tokens(Some("nope")),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    Ok(())
}

pub(crate) fn tokens_expire_run_out_and_are_revoked(s: &dyn Backend) -> TestResult {
    s.add_tenant("acme")?;
    assert!(matches!(
        s.redeem_enroll_token("tet_nope", enrollment("b", "fp0")),
        Err(StoreError::InvalidToken)
    ));
    let once = token(s, "acme", None, Some(1))?;
    s.redeem_enroll_token(&once, enrollment("b1", "fp1"))?;
    assert!(matches!(
        s.redeem_enroll_token(&once, enrollment("b2", "fp2")),
        Err(StoreError::TokenUsedUp)
    ));
    let expired = token(s, "acme", Some(Duration::ZERO), None)?;
    assert!(matches!(
        s.redeem_enroll_token(&expired, enrollment("b3", "fp3")),
        Err(StoreError::TokenExpired)
    ));
    let api = s.create_token(NewToken {
        tenant: "acme",
        kind: TokenKind::Api,
        ttl: None,
        uses: None,
        require_accept: false,
        allow_replace: false,
        role: crate::store::Role::Operator,
    })?;
    assert_eq!(s.api_token(&api.secret)?.tenant, "acme");
    assert!(matches!(s.api_token(&once), Err(StoreError::InvalidToken)));
    assert!(matches!(
        s.redeem_enroll_token(&api.secret, enrollment("b4", "fp4")),
        Err(StoreError::InvalidToken)
    ));
    s.revoke_token(&api.id)?;
    assert!(matches!(
        s.api_token(&api.secret),
        Err(StoreError::InvalidToken)
    ));
    let states: Vec<TokenState> = s.tokens(None)?.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        vec![TokenState::UsedUp, TokenState::Expired, TokenState::Revoked]
    );
    let expired_api = s.create_token(NewToken {
        tenant: "acme",
        kind: TokenKind::Api,
        ttl: Some(Duration::ZERO),
        uses: None,
        require_accept: false,
        allow_replace: false,
        role: crate::store::Role::Operator,
    })?;
    assert!(matches!(
        s.api_token(&expired_api.secret),
        Err(StoreError::TokenExpired)
    ));
    Ok(())
}

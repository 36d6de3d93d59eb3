//! Engineers' OpenSSH user certificates: which tenants a certificate lets its holder into, and
//! as whom.
//!
//! A certificate is accepted for a tenant when that tenant trusts the CA that signed it
//! (`relay tenant trust-ca`), it is a user certificate, the time is inside its validity
//! interval, its critical options are all understood and satisfied (only `source-address` is;
//! `force-command` and anything unknown refuse it, as OpenSSH refuses what it cannot honour),
//! and one of its principals is acceptable: the principals name the engineer, and a CA trusted
//! with `--principal` accepts only those. A certificate without principals is refused: it
//! would name no one.

use std::net::IpAddr;

use russh::keys::{Certificate, HashAlg, ssh_key::certificate::CertType};

use crate::store::{EngineerIdentity, TrustedCa, validate_name};

/// What a certificate grants: identities, and the CA and serial to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// One identity per tenant that accepted the certificate.
    pub identities: Vec<EngineerIdentity>,
    /// The signing CA's fingerprint.
    pub ca: String,
}

/// Checks `cert`, presented from `source` at `now` (Unix seconds), against the tenants that
/// trust its CA (`trusts`, found by the CA's fingerprint). The error says why it was refused.
pub fn check(
    cert: &Certificate,
    trusts: &[TrustedCa],
    source: IpAddr,
    now: u64,
) -> Result<Granted, String> {
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    if trusts.is_empty() {
        return Err(format!("certificate signed by {ca}, a CA no tenant trusts"));
    }
    if cert.cert_type() != CertType::User {
        return Err("a host certificate cannot log in".into());
    }
    let fingerprints: Vec<_> = trusts
        .iter()
        .filter_map(|t| {
            t.fingerprint
                .parse::<russh::keys::ssh_key::Fingerprint>()
                .ok()
        })
        .collect();
    if cert.validate_at(now, fingerprints.iter()).is_err() {
        return Err(format!(
            "certificate {:?} is not valid now (valid from {} to {}) or not signed by {ca}",
            cert.key_id(),
            cert.valid_after(),
            cert.valid_before()
        ));
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => {
                if !source_allowed(value, source)? {
                    return Err(format!(
                        "certificate {:?} may only be used from {value}, not {source}",
                        cert.key_id()
                    ));
                }
            }
            other => {
                return Err(format!(
                    "certificate {:?} has critical option {other:?}, which the relay does not support",
                    cert.key_id()
                ));
            }
        }
    }
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(format!(
            "certificate {:?} has no principals: it names no engineer",
            cert.key_id()
        ));
    }
    let mut identities = Vec::new();
    for t in trusts {
        let accepted = principals.iter().find(|p| {
            validate_name("principal", p).is_ok()
                && (t.principals.is_empty() || t.principals.contains(p))
        });
        if let Some(p) = accepted {
            identities.push(EngineerIdentity {
                user: p.clone(),
                tenant_id: t.tenant_id,
                tenant: t.tenant.clone(),
                role: t.role,
            });
        }
    }
    if identities.is_empty() {
        return Err(format!(
            "certificate {:?} has principals {principals:?}, none of which its CA is trusted for",
            cert.key_id()
        ));
    }
    Ok(Granted {
        identities,
        ca: ca.to_string(),
    })
}

/// Whether `source` is in the comma-separated address/prefix list of a `source-address`
/// option.
fn source_allowed(list: &str, source: IpAddr) -> Result<bool, String> {
    let source = match source {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(source),
        v4 => v4,
    };
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (item, None),
        };
        let bad = || format!("certificate source-address {item:?} is not an address/prefix");
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix: u32 = match prefix {
            Some(p) => p.parse().ok().filter(|p| *p <= bits).ok_or_else(bad)?,
            None => bits,
        };
        let matches = match (addr, source) {
            (IpAddr::V4(a), IpAddr::V4(s)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(a) & mask == u32::from(s) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(s)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(a) & mask == u128::from(s) & mask
            }
            _ => false,
        };
        if matches {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_lists_match_by_prefix() {
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()))
        };
        assert_eq!(source_allowed("127.0.0.1", ip("127.0.0.1")), Ok(true));
        assert_eq!(
            source_allowed("10.0.0.0/8,127.0.0.0/8", ip("127.0.0.2")),
            Ok(true)
        );
        assert_eq!(source_allowed("10.0.0.0/8", ip("127.0.0.2")), Ok(false));
        assert_eq!(source_allowed("0.0.0.0/0", ip("192.0.2.9")), Ok(true));
        assert_eq!(source_allowed("::1", ip("::1")), Ok(true));
        assert_eq!(
            source_allowed("127.0.0.1", ip("::ffff:127.0.0.1")),
            Ok(true)
        );
        assert!(source_allowed("10.0.0.0/33", ip("10.0.0.1")).is_err());
        assert!(source_allowed("nowhere", ip("10.0.0.1")).is_err());
    }
}

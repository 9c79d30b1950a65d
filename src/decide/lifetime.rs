//! Certificate lifetime arithmetic.
//!
//! `notAfter` is the earliest of every limit that applies, and the status names the
//! one that won, so a user who asked for `ttl: 24h` and got 10 minutes can see why.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::LifetimeCap;

/// `notBefore` is backdated by this much so a relying party whose clock runs a little
/// behind ours does not reject a certificate as not yet valid (threat 34).
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A certificate shorter than this is not worth issuing: the agent could hardly load it
/// before it expired. When the remaining time is shorter, the grant expires instead.
pub const MIN_LIFETIME: Duration = Duration::from_secs(30);

/// Renew when this fraction of the lifetime has passed (as cert-manager does), leaving a
/// third of it to retry a failing renewal before the old certificate expires.
pub const RENEW_FRACTION: f64 = 2.0 / 3.0;

/// Renewal moves earlier by up to this fraction of the lifetime, at random, so grants
/// issued together do not all renew in the same second (threat 11).
pub const RENEW_JITTER: f64 = 0.1;

/// Every limit that may apply to one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub now: Timestamp,
    /// The grant's `spec.ttl`, if set.
    pub requested_ttl: Option<Duration>,
    pub identity_max_ttl: Duration,
    pub operator_max_ttl: Duration,
    /// The task's deadline, when it has one.
    pub task_deadline: Option<Timestamp>,
    /// First issuance plus the identity's `maxGrantLifetime`.
    pub grant_expires_at: Timestamp,
    pub ca_not_after: Timestamp,
}

/// The planned validity of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub renew_at: Timestamp,
    pub cap: LifetimeCap,
}

/// Why no certificate can be issued now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoTimeLeft {
    /// The limit that leaves too little time.
    pub cap: LifetimeCap,
    pub until: Timestamp,
}

/// `t + d`, saturating.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    // Saturate far in the future: the other limits (the CA's expiry at least) are earlier.
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The earliest limit and which one it is. On a tie the earlier entry in this order wins,
/// so the cap shown is the most specific reason.
pub fn earliest(limits: &Limits) -> (Timestamp, LifetimeCap) {
    let now = limits.now;
    let candidates = [
        limits.requested_ttl.map(|d| (after(now, d), LifetimeCap::RequestedTTL)),
        Some((after(now, limits.identity_max_ttl), LifetimeCap::IdentityMaxTTL)),
        Some((after(now, limits.operator_max_ttl), LifetimeCap::OperatorMaxTTL)),
        limits.task_deadline.map(|t| (t, LifetimeCap::TaskDeadline)),
        Some((limits.grant_expires_at, LifetimeCap::GrantLifetime)),
        Some((limits.ca_not_after, LifetimeCap::CAExpiry)),
    ];
    candidates
        .into_iter()
        .flatten()
        .reduce(|best, c| if c.0 < best.0 { c } else { best })
        .expect("at least one limit always applies")
}

/// Plans a certificate's validity. `jitter` is a random number in `[0, 1)`, passed in
/// so that tests are deterministic.
pub fn plan(limits: &Limits, jitter: f64) -> Result<Lifetime, NoTimeLeft> {
    let (not_after, cap) = earliest(limits);
    let now = limits.now;
    let lifetime = now.duration_until(not_after);
    if lifetime < SignedDuration::try_from(MIN_LIFETIME).expect("small constant") {
        return Err(NoTimeLeft { cap, until: not_after });
    }
    let fraction = RENEW_FRACTION - RENEW_JITTER * jitter.clamp(0.0, 1.0);
    let renew_at = now + lifetime.mul_f64(fraction);
    Ok(Lifetime {
        not_before: now - SignedDuration::try_from(BACKDATE).expect("small constant"),
        not_after,
        renew_at,
        cap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(offset_secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset_secs).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            now: at(0),
            requested_ttl: None,
            identity_max_ttl: Duration::from_secs(3600),
            operator_max_ttl: Duration::from_secs(24 * 3600),
            task_deadline: None,
            grant_expires_at: at(24 * 3600),
            ca_not_after: at(365 * 24 * 3600),
        }
    }

    #[test]
    fn identity_max_ttl_applies_when_no_ttl_is_requested() {
        let l = plan(&limits(), 0.0).unwrap();
        assert_eq!(l.not_after, at(3600));
        assert_eq!(l.cap, LifetimeCap::IdentityMaxTTL);
        assert_eq!(l.not_before, at(-60));
        assert_eq!(l.renew_at, at(2400));
    }

    #[test]
    fn shorter_requested_ttl_wins() {
        let l = plan(
            &Limits {
                requested_ttl: Some(Duration::from_secs(300)),
                ..limits()
            },
            0.0,
        )
        .unwrap();
        assert_eq!((l.not_after, l.cap), (at(300), LifetimeCap::RequestedTTL));
    }

    #[test]
    fn threat_9_ttl_longer_than_the_identity_maximum_is_capped_and_named() {
        let l = plan(
            &Limits {
                requested_ttl: Some(Duration::from_secs(99 * 3600)),
                ..limits()
            },
            0.0,
        )
        .unwrap();
        assert_eq!((l.not_after, l.cap), (at(3600), LifetimeCap::IdentityMaxTTL));
    }

    #[test]
    fn threat_9_task_deadline_caps_the_certificate() {
        let l = plan(
            &Limits {
                task_deadline: Some(at(600)),
                ..limits()
            },
            0.0,
        )
        .unwrap();
        assert_eq!((l.not_after, l.cap), (at(600), LifetimeCap::TaskDeadline));
    }

    #[test]
    fn operator_maximum_and_ca_expiry_cap_too() {
        let op = plan(
            &Limits {
                operator_max_ttl: Duration::from_secs(120),
                ..limits()
            },
            0.0,
        )
        .unwrap();
        assert_eq!(op.cap, LifetimeCap::OperatorMaxTTL);
        let ca = plan(
            &Limits {
                ca_not_after: at(900),
                ..limits()
            },
            0.0,
        )
        .unwrap();
        assert_eq!((ca.not_after, ca.cap), (at(900), LifetimeCap::CAExpiry));
    }

    #[test]
    fn threat_10_grant_lifetime_ends_renewal() {
        let near_end = Limits {
            now: at(24 * 3600 - 1200),
            ..limits()
        };
        let l = plan(&near_end, 0.0).unwrap();
        assert_eq!((l.not_after, l.cap), (at(24 * 3600), LifetimeCap::GrantLifetime));
        let past = Limits {
            now: at(24 * 3600 - 10),
            ..limits()
        };
        assert_eq!(
            plan(&past, 0.0),
            Err(NoTimeLeft {
                cap: LifetimeCap::GrantLifetime,
                until: at(24 * 3600)
            })
        );
    }

    #[test]
    fn passed_task_deadline_leaves_no_time() {
        let l = Limits {
            task_deadline: Some(at(-5)),
            ..limits()
        };
        assert_eq!(plan(&l, 0.5).unwrap_err().cap, LifetimeCap::TaskDeadline);
    }

    #[test]
    fn threat_11_jitter_spreads_renewal_within_a_tenth_of_the_lifetime() {
        let early = plan(&limits(), 0.999).unwrap().renew_at;
        let late = plan(&limits(), 0.0).unwrap().renew_at;
        assert!(early < late);
        assert!(late.duration_since(early) <= SignedDuration::from_secs(360));
        assert!(early > at(2000));
    }

    #[test]
    fn threat_8_huge_durations_saturate_instead_of_overflowing() {
        let l = Limits {
            requested_ttl: Some(Duration::MAX),
            identity_max_ttl: Duration::MAX,
            operator_max_ttl: Duration::MAX,
            ..limits()
        };
        assert_eq!(plan(&l, 0.0).unwrap().cap, LifetimeCap::GrantLifetime);
    }
}

//! Which tenant owns a business phone number: the one cache of `phone_numbers` that
//! the webhook path (to deliver events) and the writers (to store what could not be
//! delivered) share. Only owned numbers are cached: a number registered later (by the
//! operator's command, in another process) is looked up again until it is found, so
//! it routes at once. A registered number never changes owner (`converra number add`
//! refuses a number registered to anyone). An entry is still trusted only for
//! [`ROUTE_TTL_MS`], so that a number released by another process is seen within that
//! time.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{tenants, DbConn, StorageError};
use crate::ids::{PhoneNumberId, TenantId};

/// How long an owner found in the database is trusted.
pub const ROUTE_TTL_MS: i64 = 60_000;

#[derive(Debug, Default)]
pub struct RouteCache {
    /// phone_number_id → (owner, when it was looked up).
    owners: RwLock<HashMap<PhoneNumberId, (TenantId, i64)>>,
}

impl RouteCache {
    /// The owners of `numbers` known and fresh at `now_ms`, and the numbers to look up.
    pub fn cached(
        &self,
        numbers: impl IntoIterator<Item = PhoneNumberId>,
        now_ms: i64,
    ) -> (HashMap<PhoneNumberId, TenantId>, Vec<PhoneNumberId>) {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        let owners = self.owners.read().ok();
        for number in numbers {
            let fresh = owners
                .as_ref()
                .and_then(|owners| owners.get(&number))
                .filter(|(_, at)| now_ms.saturating_sub(*at) < ROUTE_TTL_MS)
                .map(|(tenant, _)| tenant.clone());
            match fresh {
                Some(tenant) => {
                    found.insert(number, tenant);
                }
                None => missing.push(number),
            }
        }
        (found, missing)
    }

    /// Looks `numbers` up in the database and remembers the owners found.
    pub fn look_up(
        &self,
        conn: &mut DbConn,
        numbers: &[PhoneNumberId],
        now_ms: i64,
    ) -> Result<HashMap<PhoneNumberId, TenantId>, StorageError> {
        let asked: Vec<&str> = numbers.iter().map(PhoneNumberId::as_str).collect();
        let found: HashMap<PhoneNumberId, TenantId> = tenants::owners_of_numbers(conn, &asked)?
            .into_iter()
            .map(|(number, tenant)| (PhoneNumberId(number), TenantId(tenant)))
            .collect();
        if let Ok(mut owners) = self.owners.write() {
            for number in numbers {
                match found.get(number) {
                    Some(tenant) => owners.insert(number.clone(), (tenant.clone(), now_ms)),
                    // Released since it was cached.
                    None => owners.remove(number),
                };
            }
        }
        Ok(found)
    }

    /// Forgets every number `tenant_id` owned (its account was closed): the next
    /// update for one of them is routed by the database, which no longer has it.
    pub fn forget_tenant(&self, tenant_id: &TenantId) {
        if let Ok(mut owners) = self.owners.write() {
            owners.retain(|_, (owner, _)| owner != tenant_id);
        }
    }

    /// The owners of `numbers`, from the cache where fresh, else from the database.
    pub fn owners(
        &self,
        conn: &mut DbConn,
        numbers: impl IntoIterator<Item = PhoneNumberId>,
        now_ms: i64,
    ) -> Result<HashMap<PhoneNumberId, TenantId>, StorageError> {
        let (mut found, missing) = self.cached(numbers, now_ms);
        if !missing.is_empty() {
            found.extend(self.look_up(conn, &missing, now_ms)?);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let cache = RouteCache::default();
        if let Ok(mut owners) = cache.owners.write() {
            owners.insert("n1".into(), (TenantId("t1".into()), 1_000));
        }
        let (found, missing) = cache.cached(["n1".into(), "n2".into()], 1_000);
        assert_eq!(found.get("n1"), Some(&TenantId("t1".into())));
        assert_eq!(missing, vec![PhoneNumberId::from("n2")]);
        let (found, missing) = cache.cached(["n1".into()], 1_000 + ROUTE_TTL_MS);
        assert!(found.is_empty(), "stale after the TTL");
        assert_eq!(missing, vec![PhoneNumberId::from("n1")]);
    }
}

//! Leader election on one key, for fleet's engine: [`Client::campaign`] creates the key on the
//! candidate's lease only if it does not exist (a txn on `create_revision == 0`), so exactly one
//! candidate wins; [`Client::leader`] reads who holds it. The winner's [`Leader::fence`] is a
//! compare on the key's create revision: a txn guarded by it applies only while that very
//! leadership lasts, so a deposed leader that has not noticed yet cannot write.

use crate::kv::{Compare, CompareOp, GetOptions, Op, PutOptions, Txn};
use crate::{Client, Error, KeyValue};

/// Who holds an election key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub key: Vec<u8>,
    /// What the leader wrote (its name, address...).
    pub value: Vec<u8>,
    /// The leader's lease: the leadership ends with it.
    pub lease: i64,
    /// The revision that created the key: one per leadership, the fencing token.
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl Leader {
    fn from_kv(kv: KeyValue) -> Leader {
        Leader {
            key: kv.key,
            value: kv.value,
            lease: kv.lease,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }

    /// The compare that holds only while this leadership lasts; add it to every write made as
    /// leader (see [`Leader::fenced`]).
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }

    /// `txn` with this leadership's fence added to its compares.
    pub fn fenced(&self, txn: Txn) -> Txn {
        txn.when([self.fence()])
    }
}

/// How a campaign went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// The candidate leads (it created the key now, or it already held it on the same lease).
    Elected(Leader),
    /// Someone else leads.
    Follower(Leader),
}

impl Client {
    /// Tries to become leader on `key`, writing `value` on `lease`. Does not wait: a follower
    /// watches the key and campaigns again when it is deleted.
    pub async fn campaign(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<Campaign, Error> {
        let key = key.into();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                Op::put(key.clone(), value, PutOptions::new().lease(lease)),
                Op::get(key.clone(), GetOptions::new()),
            ])
            .or_else([Op::get(key.clone(), GetOptions::new())]);
        let r = self.txn(txn).await?;
        let kv = r
            .responses
            .iter()
            .filter_map(|o| o.as_get())
            .find_map(|g| g.kvs.first().cloned());
        let Some(kv) = kv else {
            // the key vanished between the compare and the read: impossible in one txn
            return Err(Error::Decode {
                endpoint: self.current_endpoint().to_string(),
                path: "/v3/kv/txn",
                reason: "a campaign's txn returned no key".into(),
            });
        };
        let leader = Leader::from_kv(kv);
        if r.succeeded || (lease != 0 && leader.lease == lease) {
            Ok(Campaign::Elected(leader))
        } else {
            Ok(Campaign::Follower(leader))
        }
    }

    /// Who leads on `key`, if anyone.
    pub async fn leader(&self, key: impl AsRef<[u8]>) -> Result<Option<Leader>, Error> {
        let r = self.get(key, GetOptions::new()).await?;
        Ok(r.kvs.into_iter().next().map(Leader::from_kv))
    }

    /// Gives the leadership up (deletes the key if it is still this leadership's); true when
    /// it was.
    pub async fn resign(&self, leader: &Leader) -> Result<bool, Error> {
        let txn = leader.fenced(Txn::new()).and_then([Op::delete(
            leader.key.clone(),
            crate::kv::DeleteOptions::new(),
        )]);
        Ok(self.txn(txn).await?.succeeded)
    }
}

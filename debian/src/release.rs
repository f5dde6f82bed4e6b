//! (in progress: owned by the trust work)

//! (in progress: owned by the resolver work)

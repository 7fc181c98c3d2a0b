//! Unit tests of the cache against a counting in-memory store, in virtual time.

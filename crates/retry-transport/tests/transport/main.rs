//! Public-API tests of retry-transport against testkit's rate-limiting server.
//!
//! Claims about what is held while a request sleeps are proven by counting — slots in use on
//! the client, requests in flight and connections opened on the server — at a moment when
//! every retrying request is provably parked in its back-off sleep ([`common::GatedSleeper`]).
//! Tests that need the clock use `start_paused = true`; those that do loopback IO in paused
//! time keep no competing client timers (no connect timeout), because tokio auto-advances to
//! the next timer whenever the runtime waits on IO.

mod auth;
mod azure;
mod common;
mod limits;
mod policy;
mod release;
mod reset;
mod timeouts;

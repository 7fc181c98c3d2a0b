//! Cross-crate integration suites; see docs/testing.md.

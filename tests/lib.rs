//! Helpers shared by vmpi integration tests.

//! Shared helpers of the end-to-end tests (paths of the test model and fixtures).

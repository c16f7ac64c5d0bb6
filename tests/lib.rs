//! Cross-service integration tests live in the `[[test]]` targets of this package.

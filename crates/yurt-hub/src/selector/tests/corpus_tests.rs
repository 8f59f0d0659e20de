//! Corpus tests (filled in below).

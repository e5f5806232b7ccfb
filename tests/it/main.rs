//! Integration suite (being written).

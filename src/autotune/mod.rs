//! The autotune map (being written).

//! Configuration from the environment (`src/config.rs`): a `PHOTOFINISH_*` variable
//! fills in only what the application left unset; a setting on the builder wins.
//!
//! This binary sets variables of its own process, so it holds one test: no other test
//! may build an engine here while the environment changes under it.

use photofinish::{BackendChoice, Engine, EngineBuilder};

fn builder() -> EngineBuilder {
    Engine::builder()
        .backend(BackendChoice::Cpu)
        .without_autotune_file()
}

#[test]
fn a_builder_setting_wins_over_the_environment() {
    // A fleet URL that does not parse: an engine that used it would fail to build.
    std::env::set_var("PHOTOFINISH_FLEET_URL", "not a url");

    // Left unset on the builder, the environment's URL is the one used.
    #[cfg(feature = "redis")]
    assert!(
        matches!(builder().build(), Err(photofinish::EngineError::Fleet(_))),
        "PHOTOFINISH_FLEET_URL was not read where the builder set no fleet"
    );

    // Set on the builder, it wins: no fleet, whatever the environment says.
    let engine = builder()
        .without_fleet()
        .build()
        .expect("without_fleet() must win over PHOTOFINISH_FLEET_URL");
    engine.shutdown();

    std::env::remove_var("PHOTOFINISH_FLEET_URL");
}
